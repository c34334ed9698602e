// What a leaked secret can look like in a response or a log line: the whole value, any piece of
// it long enough to matter (a truncated, split or partly redacted leak), and its base64 and
// base64url spellings, whole or in pieces.

/** The shortest piece of a secret that counts as a leak. */
export const LEAK_PIECE_CHARS = 12;

// Base64 turns 3 bytes into 4 characters; 12 characters are 3 whole groups (9 bytes of the secret).
const GROUP_CHARS = 4;
const ENCODED_PIECE_CHARS = 12;

/**
 * Every form of `secret` worth searching for: the secret, each of its substrings of
 * LEAK_PIECE_CHARS, and every run of 12 base64 or base64url characters that encodes 3 whole groups
 * of it, for each of the 3 byte offsets it can start at inside a larger encoded value. Any base64
 * text holding a 12-character piece of the secret contains at least 3 whole groups of that piece.
 */
export function leakForms(secret: string): string[] {
  const forms = new Set<string>([secret]);
  for (let i = 0; i + LEAK_PIECE_CHARS <= secret.length; i++) forms.add(secret.slice(i, i + LEAK_PIECE_CHARS));
  const bytes = Buffer.from(secret);
  for (const encoding of ['base64', 'base64url'] as const) {
    for (let shift = 0; shift < 3; shift++) {
      const encoded = Buffer.concat([Buffer.alloc(shift), bytes]).toString(encoding);
      // Only the groups made of the secret's bytes alone read the same in any surrounding value.
      const from = Math.ceil(shift / 3) * GROUP_CHARS;
      const to = Math.floor((shift + bytes.length) / 3) * GROUP_CHARS;
      for (let i = from; i + ENCODED_PIECE_CHARS <= to; i += GROUP_CHARS) {
        forms.add(encoded.slice(i, i + ENCODED_PIECE_CHARS));
      }
    }
  }
  return [...forms];
}

/** The forms in `forms` that occur in `text`. */
export function findLeaks(text: string, forms: readonly string[]): string[] {
  return forms.filter((form) => text.includes(form));
}
