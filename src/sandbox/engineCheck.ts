import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

/** Loads by path like `require`, into the same module cache (isolated-vm's own load then reuses it). */
const load = createRequire(__filename);

/** Compiled into the isolated-vm addon by scripts/patch-isolated-vm.js (the npm postinstall step). */
export const ENGINE_PATCH_MARKER = 'isogear-patch:module-handles-lock:1';

/** The oldest Node.js isogear runs on: package.json's `engines` and the install script say the same. */
export const MIN_NODE_MAJOR = 24;

/** Why this Node.js cannot run isogear (one line naming the version found and the one required), or undefined. */
export function nodeProblem(version: string = process.versions.node): string | undefined {
  const major = Number(/^v?(\d+)\./.exec(version)?.[1]);
  if (major >= MIN_NODE_MAJOR) return undefined;
  return `isogear needs Node.js ${MIN_NODE_MAJOR} or later; this is Node.js ${version.replace(/^v?/, 'v')}`;
}

/**
 * The addon `require('isolated-vm')` loads. isolated-vm 7 finds it with node-gyp-build, which
 * prefers build/Release (where the postinstall step compiles the patched addon) to the prebuilt
 * binaries it ships (unpatched); asking node-gyp-build itself keeps this check on the same file.
 * Throws when there is none for this Node.js.
 */
export function installedAddonPath(): string {
  const dir = path.dirname(require.resolve('isolated-vm/package.json'));
  const nodeGypBuild = load(load.resolve('node-gyp-build', { paths: [dir] })) as { resolve(dir: string): string };
  return nodeGypBuild.resolve(dir);
}

/**
 * Why the isolated-vm addon must not run isogear, or undefined when it may. An addon built without
 * isogear's patch (a prebuilt binary, or a rebuild from unpatched source) tears an isolate's module
 * map when module loads run concurrently, and aborts the process; one built for another Node.js
 * does not load. Reads the whole addon (about 25 MB) and loads it: call it once at start-up,
 * never per request.
 */
export function engineProblem(addon?: string): string | undefined {
  if (addon === undefined) {
    try {
      addon = installedAddonPath();
    } catch (err) {
      return `no isolated-vm addon for Node.js ${process.version} (${(err as Error).message.split('\n')[0]}): run \`npm ci\``;
    }
  }
  let binary: Buffer;
  try {
    binary = readFileSync(addon);
  } catch {
    return `the isolated-vm addon ${addon} is missing: run \`npm ci\``;
  }
  if (!binary.includes(ENGINE_PATCH_MARKER)) {
    return `the isolated-vm addon ${addon} was not built with isogear's module-handles patch: run \`npm ci\` (or \`npm run postinstall\`), which patches and compiles it`;
  }
  return loadProblem(addon);
}

/** Why `addon` does not load in this Node.js (built for another ABI, say), or undefined. */
export function loadProblem(addon: string): string | undefined {
  try {
    load(addon);
    return undefined;
  } catch (err) {
    const message = (err as Error).message;
    const abi = /NODE_MODULE_VERSION (\d+)\./.exec(message);
    if (abi) {
      return `the isolated-vm addon ${addon} was built for another Node.js (NODE_MODULE_VERSION ${abi[1]}; Node.js ${process.version} needs ${process.versions.modules}): run \`npm rebuild\` or \`npm ci\` with this Node.js`;
    }
    return `the isolated-vm addon ${addon} does not load: ${message.split('\n')[0]}; run \`npm ci\``;
  }
}
