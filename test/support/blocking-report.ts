// Loaded by `npm test` with --import, so by the runner and every test file's process. A test file's
// process reports its results to the runner over a pipe, and --test-force-exit exits once that report
// stream ends. Writes the runner is slow to read wait in a queue, and the exit drops them: the file's
// last results are lost (nodejs/node#64833). Blocking writes leave nothing queued at exit.
interface PipeHandle {
  setBlocking?(blocking: boolean): number;
}

if (process.env['NODE_TEST_CONTEXT'] === 'child-v8') {
  (process.stdout as unknown as { _handle?: PipeHandle })._handle?.setBlocking?.(true);
}
