import { readFileSync } from 'node:fs';
import path from 'node:path';

/** Compiled into the isolated-vm addon by scripts/patch-isolated-vm.js (the npm postinstall step). */
export const ENGINE_PATCH_MARKER = 'isogear-patch:module-handles-lock:1';

/** Where the installed isolated-vm keeps its compiled addon. */
export function installedAddonPath(): string {
  return path.join(path.dirname(require.resolve('isolated-vm/package.json')), 'out/isolated_vm.node');
}

/**
 * Why an isolated-vm addon must not run isogear, or undefined when it may. An addon built without
 * isogear's patch (a prebuilt binary, or a rebuild from unpatched source) tears an isolate's module
 * map when module loads run concurrently, and aborts the process. Reads the whole addon (about
 * 25 MB): call it once at start-up, never per request.
 */
export function engineProblem(addon: string = installedAddonPath()): string | undefined {
  let binary: Buffer;
  try {
    binary = readFileSync(addon);
  } catch {
    return `the isolated-vm addon ${addon} is missing: run npm ci`;
  }
  if (!binary.includes(ENGINE_PATCH_MARKER)) {
    return `the isolated-vm addon ${addon} was not built with isogear's module-handles patch: run \`npm ci\` (or \`npm run postinstall\`), which patches and compiles it`;
  }
  return undefined;
}
