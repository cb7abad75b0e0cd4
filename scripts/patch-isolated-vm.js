#!/usr/bin/env node
// postinstall: patches isolated-vm 7.0.2's module bookkeeping and compiles the addon from the
// patched source. Plain Node (no dependencies), so it runs in every install, `--omit=dev` included.
//
// isolated-vm 7 ships prebuilt binaries (prebuilds/, chosen by node-gyp-build) and its own install
// step takes them: no compile there. This script compiles once, into build/Release, which
// node-gyp-build prefers to any prebuilt binary.
//
// The bug: each isolate keeps a std::unordered_multimap of its modules (module_handles). Its own
// thread writes it when a module is compiled and reads it while linking and on `import.meta`, but a
// module's bookkeeping is destroyed wherever its last handle goes, usually the Node.js thread, with
// no lock. Under concurrent module loads into one isolate (shared mode) the map is torn and the
// process aborts (`ModuleInfo::~ModuleInfo(): Assertion 'it != range.second' failed`). The patch
// puts one mutex around every access and copies the import.meta callback out under it. Still so in
// 7.0.2 (the map, its three accesses and the destructor are unchanged since 5.0.4; `npm run
// stress` aborts on the prebuilt binary: see the README's development section).
//
// A marker string is compiled into the addon; src/sandbox/engineCheck.ts refuses to start the
// server on an addon without it (a prebuilt binary, or a rebuild from unpatched source).
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const MARKER = 'isogear-patch:module-handles-lock:1';
const VERSION = '7.0.2';
/** The oldest Node.js isogear runs on (package.json's engines, src/sandbox/engineCheck.ts). */
const MIN_NODE_MAJOR = 24;

function fail(message) {
  process.stderr.write(`patch-isolated-vm: ${message}\n`);
  process.exit(1);
}

/** [anchor, replacement]: each anchor must occur exactly once in the 7.0.2 source. */
const EDITS = [
  [
    'auto LookupModuleInfo(Local<Module> module) {\n\tauto& module_map = IsolateEnvironment::GetCurrent().module_handles;',
    [
      '// isogear: module_handles is written on the isolate thread and by ~ModuleInfo on any thread.',
      'std::mutex module_handles_mutex;',
      `__attribute__((used)) const char isogear_patch_marker[] = "${MARKER}";`,
      '',
      'auto LookupModuleInfo(Local<Module> module) {',
      '\tstd::lock_guard<std::mutex> module_handles_lock{module_handles_mutex};',
      '\tauto& module_map = IsolateEnvironment::GetCurrent().module_handles;',
    ].join('\n'),
  ],
  [
    '\t// Add to isolate\'s list of modules\n\tIsolateEnvironment::GetCurrent().module_handles.emplace(identity_hash, this);',
    [
      '\t// Add to isolate\'s list of modules',
      '\t{',
      '\t\tstd::lock_guard<std::mutex> module_handles_lock{module_handles_mutex};',
      '\t\tIsolateEnvironment::GetCurrent().module_handles.emplace(identity_hash, this);',
      '\t}',
    ].join('\n'),
  ],
  [
    '\tif (environment) {\n\t\tauto& module_map = environment->module_handles;',
    '\tif (environment) {\n\t\tstd::lock_guard<std::mutex> module_handles_lock{module_handles_mutex};\n\t\tauto& module_map = environment->module_handles;',
  ],
  [
    [
      '\tModuleInfo* found = LookupModuleInfo(module);',
      '\tif (found != nullptr) {',
      '\t\tif (found->meta_callback) {',
      '\t\t\tdetail::RunBarrier([&]() {',
      '\t\t\t\tLocal<Value> argv[1];',
      '\t\t\t\targv[0] = meta;',
      '\t\t\t\tUnmaybe(found->meta_callback.Deref()->Call(context, Undefined(Isolate::GetCurrent()), 1, argv));',
      '\t\t\t});',
      '\t\t}',
      '\t}',
    ].join('\n'),
    [
      '\t// The ModuleInfo may be destroyed on another thread once the lock is dropped: copy the callback.',
      '\tRemoteHandle<Function> meta_callback;',
      '\t{',
      '\t\tstd::lock_guard<std::mutex> module_handles_lock{module_handles_mutex};',
      '\t\tauto& module_map = IsolateEnvironment::GetCurrent().module_handles;',
      '\t\tauto range = module_map.equal_range(module->GetIdentityHash());',
      '\t\tauto it = std::find_if(range.first, range.second, [&](decltype(*module_map.begin()) data) {',
      '\t\t\treturn data.second->handle.Deref() == module;',
      '\t\t});',
      '\t\tif (it != range.second) {',
      '\t\t\tmeta_callback = it->second->meta_callback;',
      '\t\t}',
      '\t}',
      '\tif (meta_callback) {',
      '\t\tdetail::RunBarrier([&]() {',
      '\t\t\tLocal<Value> argv[1];',
      '\t\t\targv[0] = meta;',
      '\t\t\tUnmaybe(meta_callback.Deref()->Call(context, Undefined(Isolate::GetCurrent()), 1, argv));',
      '\t\t});',
      '\t}',
    ].join('\n'),
  ],
];

function main() {
  const major = Number(process.versions.node.split('.')[0]);
  if (major < MIN_NODE_MAJOR) fail(`isogear needs Node.js ${MIN_NODE_MAJOR} or later; this is Node.js ${process.version}`);
  let dir;
  try {
    dir = path.dirname(require.resolve('isolated-vm/package.json'));
  } catch {
    fail('isolated-vm is not installed');
  }
  const { version } = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'));
  if (version !== VERSION) fail(`expected isolated-vm ${VERSION}, found ${version}: re-check the patch against its source`);

  const file = path.join(dir, 'src/module/module_handle.cc');
  let source = fs.readFileSync(file, 'utf8');
  if (!source.includes(MARKER)) {
    for (const [anchor, replacement] of EDITS) {
      const at = source.indexOf(anchor);
      if (at < 0 || source.indexOf(anchor, at + 1) >= 0) fail(`${path.relative(dir, file)} does not match isolated-vm ${VERSION}'s source`);
      source = source.slice(0, at) + replacement + source.slice(at + anchor.length);
    }
    fs.writeFileSync(file, source);
  }

  // node-gyp-build loads build/Release/*.node before any prebuilt binary.
  const addon = path.join(dir, 'build/Release/isolated_vm.node');
  if (fs.existsSync(addon) && fs.readFileSync(addon).includes(MARKER) && loads(addon)) return;

  // npm hands lifecycle scripts its bundled node-gyp; outside npm, look next to npm itself.
  let gyp = process.env.npm_config_node_gyp;
  if (!gyp || !fs.existsSync(gyp)) {
    try {
      gyp = require.resolve('node-gyp/bin/node-gyp.js', { paths: [path.join(path.dirname(process.env.npm_execpath ?? ''), '..')] });
    } catch {
      fail('node-gyp not found: run this through npm (npm ci, or npm run postinstall)');
    }
  }
  process.stderr.write('patch-isolated-vm: compiling isolated-vm with the module-handles lock (about two minutes)\n');
  const gypRun = (...args) => {
    // The compiler's many warnings stay out of the install log unless the build fails.
    const run = spawnSync(process.execPath, [gyp, ...args], { cwd: dir, encoding: 'utf8', maxBuffer: 64 << 20 });
    if (run.status !== 0) {
      process.stderr.write(`${run.stdout}${run.stderr}`);
      fail(`node-gyp ${args[0]} failed (exit ${run.status})`);
    }
  };
  gypRun('rebuild', '--release', '-j', 'max');
  // Keep the addon alone: the object files and static library beside it are about 60 MB.
  const kept = path.join(dir, 'isolated_vm.node.built');
  fs.renameSync(addon, kept);
  gypRun('clean');
  fs.mkdirSync(path.dirname(addon), { recursive: true });
  fs.renameSync(kept, addon);
  if (!fs.readFileSync(addon).includes(MARKER)) fail('the rebuilt addon lacks the patch marker');
  if (!loads(addon)) fail(`the rebuilt addon does not load in Node.js ${process.version}`);
}

/** Whether this Node.js loads `addon` (an addon built for another Node.js ABI does not). */
function loads(addon) {
  const run = spawnSync(process.execPath, ['--no-node-snapshot', '-e', 'require(process.argv[1])', addon], { encoding: 'utf8' });
  return run.status === 0;
}

main();
