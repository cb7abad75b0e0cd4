import { createHash } from 'node:crypto';
import { SourceMap, type SourceMapPayload } from 'node:module';
import type * as Oxc from 'oxc-transform' with { 'resolution-mode': 'import' };

// oxc-transform is an ES module without top-level await: Node.js 24 requires it synchronously.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { transformSync } = require('oxc-transform') as typeof Oxc;

/** What a request's sources are written in. */
export type Language = 'javascript' | 'typescript';

/** A TypeScript module as the isolate compiles it: JavaScript, the name V8 reports, and the way back. */
export interface Transpiled {
  code: string;
  /** The name the module is compiled under: its specifier, then `#` and its source's hash (see mapPositions). */
  filename: string;
  map: SourceMap;
}

/** A TypeScript source that does not parse: the first error, where it is in the source the user wrote. */
export class TypeScriptSyntaxError extends Error {
  constructor(
    readonly reason: string,
    readonly specifier: string,
    readonly line: number,
    readonly column: number,
  ) {
    super(`${reason} (${specifier}:${line}:${column})`);
    this.name = 'SyntaxError';
  }
}

const HASH_CHARS = 12;
/** `specifier#hash:line:column` in a stack or message: a position in a transpiled module. */
const POSITION = /([^\s()@]+)#([0-9a-f]{12}):(\d+):(\d+)/g;

/** Line and column (1-based) of offset `at` in `source`. */
function lineAndColumn(source: string, at: number): { line: number; column: number } {
  let line = 1;
  let start = 0;
  for (let i = source.indexOf('\n'); i >= 0 && i < at; i = source.indexOf('\n', i + 1)) {
    line += 1;
    start = i + 1;
  }
  return { line, column: at - start + 1 };
}

/**
 * TypeScript to JavaScript for the isolates, by type stripping (types are removed, not checked,
 * as Deno, Bun and esbuild do) with oxc-transform: an in-process native transformer, about 20 µs
 * for a small module (see the README's comparison). Each output carries a source map, so the
 * positions V8 reports in stacks and messages are mapped back to the line and column the user
 * wrote. Outputs are cached by the SHA-256 of the source, bounded in bytes, least recently used
 * out first.
 */
export class Transpiler {
  private readonly cache = new Map<string, { code: string; map: SourceMap; size: number }>();
  private bytes = 0;
  hits = 0;
  misses = 0;

  constructor(readonly maxBytes: number) {}

  get sizeBytes(): number {
    return this.bytes;
  }

  /** `source` (TypeScript) as JavaScript, compiled under `specifier`. Throws TypeScriptSyntaxError. */
  transpile(specifier: string, source: string): Transpiled {
    const hash = createHash('sha256').update(source).digest('hex').slice(0, HASH_CHARS);
    const filename = `${specifier}#${hash}`;
    const key = `${hash}\n${specifier}`;
    const hit = this.cache.get(key);
    if (hit) {
      this.cache.delete(key);
      this.cache.set(key, hit);
      this.hits += 1;
      return { code: hit.code, filename, map: hit.map };
    }
    this.misses += 1;
    const out = transformSync(specifier.endsWith('.tsx') ? specifier : `${specifier}.ts`, source, { sourcemap: true, typescript: { onlyRemoveTypeImports: false } });
    if (out.errors.length > 0) {
      const first = out.errors[0];
      const at = lineAndColumn(source, first.labels?.[0]?.start ?? 0);
      throw new TypeScriptSyntaxError(first.message, specifier, at.line, at.column);
    }
    // the source text is the request's: it need not be kept twice
    const payload = { ...(out.map as SourceMapPayload), sourcesContent: undefined } as unknown as SourceMapPayload;
    const map = new SourceMap(payload);
    const size = out.code.length * 2 + (payload.mappings?.length ?? 0) * 2;
    if (this.maxBytes > 0 && size <= this.maxBytes / 4) {
      this.cache.set(key, { code: out.code, map, size });
      this.bytes += size;
      while (this.bytes > this.maxBytes) {
        const [oldest, old] = this.cache.entries().next().value as [string, { size: number }];
        this.cache.delete(oldest);
        this.bytes -= old.size;
      }
    }
    return { code: out.code, filename, map };
  }
}

/**
 * Rewrites every `specifier#hash:line:column` in `text` to the position in the TypeScript the
 * user wrote, `specifier:line:column`, through `maps` (filename → map); a position no map knows
 * loses its hash only.
 */
export function mapPositions(text: string, maps: ReadonlyMap<string, SourceMap>): string {
  if (!text.includes('#')) return text;
  return text.replace(POSITION, (whole, specifier: string, hash: string, line: string, column: string) => {
    const map = maps.get(`${specifier}#${hash}`);
    const entry = map?.findEntry(Number(line) - 1, Number(column) - 1);
    if (!entry || !('originalLine' in entry)) return `${specifier}:${line}:${column}`;
    return `${specifier}:${entry.originalLine + 1}:${entry.originalColumn + 1}`;
  });
}
