import { readFileSync } from 'node:fs';
import path from 'node:path';
import { DockerfileParser, type Instruction } from 'dockerfile-ast';
import { ROOT } from './deploy';

export const DOCKERFILE = 'deploy/Dockerfile';

export interface Copy {
  /** Stage the files come from; undefined: the build context. */
  from?: string;
  sources: string[];
  dest: string;
}

export interface Stage {
  name: string;
  /** The base image with build ARGs expanded. */
  image: string;
  instructions: Instruction[];
}

export interface ParsedDockerfile {
  text: string;
  args: Record<string, string>;
  stages: Stage[];
  final: Stage;
}

const expand = (s: string, args: Record<string, string>): string => s.replace(/\$\{(\w+)\}|\$(\w+)/g, (_, a: string, b: string) => args[a ?? b] ?? '');

/** Parses deploy/Dockerfile into stages, expanding the global ARGs in FROM lines. */
export function parseDockerfile(text = readFileSync(path.join(ROOT, DOCKERFILE), 'utf8')): ParsedDockerfile {
  const doc = DockerfileParser.parse(text);
  const args: Record<string, string> = {};
  const stages: Stage[] = [];
  for (const ins of doc.getInstructions()) {
    const keyword = ins.getKeyword();
    if (keyword === 'ARG' && stages.length === 0) {
      const [name, value = ''] = (ins.getArgumentsContent() ?? '').split('=');
      args[name.trim()] = value.trim();
    } else if (keyword === 'FROM') {
      const words = ins.getArguments().map((a) => a.getValue());
      const as = words.findIndex((w) => w.toUpperCase() === 'AS');
      stages.push({ image: expand(words[0], args), name: as >= 0 ? words[as + 1] : String(stages.length), instructions: [] });
    } else if (stages.length > 0) {
      stages[stages.length - 1].instructions.push(ins);
    }
  }
  if (stages.length === 0) throw new Error(`${DOCKERFILE} has no FROM`);
  return { text, args, stages, final: stages[stages.length - 1] };
}

export const of = (stage: Stage, keyword: string): Instruction[] => stage.instructions.filter((i) => i.getKeyword() === keyword);

/** The JSON array of an exec-form instruction (CMD, ENTRYPOINT), or undefined for shell form. */
export function execForm(ins: Instruction | undefined): string[] | undefined {
  const content = ins?.getArgumentsContent()?.trim();
  if (!content?.startsWith('[')) return undefined;
  return JSON.parse(content) as string[];
}

export function copies(stage: Stage): Copy[] {
  return of(stage, 'COPY').map((ins) => {
    const flags = (ins as unknown as { getFlags(): { getName(): string; getValue(): string | null }[] }).getFlags();
    const words = ins.getArguments().map((a) => a.getValue());
    return { from: flags.find((f) => f.getName() === 'from')?.getValue() ?? undefined, sources: words.slice(0, -1), dest: words[words.length - 1] };
  });
}

/** The environment a stage's ENV instructions set (for the build stage: what its RUNs see). */
export function stageEnv(stage: Stage): Record<string, string> {
  const env: Record<string, string> = {};
  for (const ins of of(stage, 'ENV')) {
    for (const p of (ins as unknown as { getProperties(): { getName(): string; getValue(): string | null }[] }).getProperties()) env[p.getName()] = p.getValue() ?? '';
  }
  return env;
}

/** The environment the final image sets (ENV), as the container starts with it. */
export const imageEnv = (parsed = parseDockerfile()): Record<string, string> => stageEnv(parsed.final);

/** The paths the final image declares as VOLUMEs (JSON or plain form). */
export function imageVolumes(parsed = parseDockerfile()): string[] {
  return of(parsed.final, 'VOLUME').flatMap((ins) => {
    const content = (ins.getArgumentsContent() ?? '').trim();
    return content.startsWith('[') ? (JSON.parse(content) as string[]) : content.split(/\s+/);
  });
}

/** The final image's USER (`uid[:gid]`). */
export function imageUser(parsed = parseDockerfile()): string {
  const users = of(parsed.final, 'USER');
  if (users.length === 0) return 'root';
  return (users[users.length - 1].getArgumentsContent() ?? '').trim();
}

export const workdir = (stage: Stage): string => {
  const w = of(stage, 'WORKDIR');
  return w.length === 0 ? '/' : (w[w.length - 1].getArgumentsContent() ?? '/').trim();
};
