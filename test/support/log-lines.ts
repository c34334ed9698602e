// Parses captured JSON-lines log output, so tests never split and parse it by hand.

/** Every non-empty line of `text`, parsed as JSON. */
export function logLines(text: string): Array<Record<string, unknown>> {
  return text
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => JSON.parse(line) as Record<string, unknown>);
}
