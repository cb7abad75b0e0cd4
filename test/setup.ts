/**
 * Loaded by mocha before any test (.mocharc.json): the processes tests start (servers, the command
 * line, scripts) resolve @isogear/client to its TypeScript sources, as the tests themselves do
 * (the `isogear-source` export condition), so nothing needs building first.
 */
const flag = '--conditions=isogear-source';
if (!(process.env.NODE_OPTIONS ?? '').split(/\s+/).includes(flag)) process.env.NODE_OPTIONS = `${process.env.NODE_OPTIONS ?? ''} ${flag}`.trim();
