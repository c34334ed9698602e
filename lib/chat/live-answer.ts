// A live answer: its text as parts and its end, readable by any number of clients from any offset.
// The turn appends as the model streams; clients come and go without affecting it.
//
// Parts are the unit of resumption: a client's Last-Event-ID names the part it last received by
// its offset, and the rest starts after that part. Every instance splits text into parts the same
// way (the running one, and any that mirror it over the fan-out), so ids mean the same everywhere.
import type { TurnEvent, TurnHead } from './turn.ts';

export type FinalEvent = Extract<TurnEvent, { type: 'finished' } | { type: 'failed' }>;

/** Longest part: JSON-escaped, a part must fit one notification (PostgreSQL's payload is under 8000 bytes). */
export const MAX_PART_CHARS = 1000;

const DONE: IteratorReturnResult<undefined> = Object.freeze({ done: true, value: undefined });

/** The answer's parts with their start offsets, and its end once known. */
export class LiveAnswer {
  readonly head: TurnHead;
  readonly #parts: string[] = [];
  readonly #starts: number[] = [];
  readonly #base: number;
  #length: number;
  #final: FinalEvent | undefined;
  #stored: Promise<void> = Promise.resolve();
  #changed: Promise<void> | undefined;
  #wake: (() => void) | undefined;

  /** `base`: where a mirror's first part starts (it holds the text from there on). */
  constructor(head: TurnHead, base = 0) {
    this.head = head;
    this.#base = base;
    this.#length = base;
  }

  /** Characters of the answer so far (the offset after the last part). */
  get length(): number {
    return this.#length;
  }

  get final(): FinalEvent | undefined {
    return this.#final;
  }

  /** Resolves once the end is stored (at once for a mirror, which stores nothing). */
  stored(): Promise<void> {
    return this.#stored.catch(() => {});
  }

  /** Appends text from the model, in parts of at most MAX_PART_CHARS. */
  append(text: string): void {
    for (let at = 0; at < text.length; ) {
      const piece = cutAt(text.slice(at, at + MAX_PART_CHARS + 1), MAX_PART_CHARS);
      this.#push(piece);
      at += piece.length;
    }
    this.#notify();
  }

  /** Adds a part received from the instance running the answer; false when it leaves a gap. */
  appendPart(start: number, text: string): boolean {
    if (start + text.length <= this.#length) return true; // already have it
    if (start !== this.#length) return false;
    this.#push(text);
    this.#notify();
    return true;
  }

  /**
   * Marks the end; readers get it after the last part at once, and their stream closes once `stored`
   * settles, so a client whose response has ended finds the answer whole in the conversation.
   */
  end(event: FinalEvent, stored: Promise<void> = Promise.resolve()): void {
    if (this.#final === undefined) {
      this.#final = event;
      this.#stored = stored;
    }
    this.#notify();
  }

  /** The whole text held. */
  text(): string {
    return this.#parts.join('');
  }

  /** The text from `offset` on. */
  textFrom(offset: number): string {
    const i = this.#partAt(offset);
    if (i === -1) return '';
    const first = (this.#parts[i] as string).slice(offset - (this.#starts[i] as number));
    return i === this.#parts.length - 1 ? first : first + this.#parts.slice(i + 1).join('');
  }

  /** The parts from `offset` on, as [start, text] (the first one cut at `offset`). */
  partsFrom(offset: number): Array<[number, string]> {
    const i = this.#partAt(offset);
    if (i === -1) return [];
    const out: Array<[number, string]> = [];
    for (let j = i; j < this.#parts.length; j++) {
      const start = this.#starts[j] as number;
      const text = this.#parts[j] as string;
      out.push(start < offset ? [offset, text.slice(offset - start)] : [start, text]);
    }
    return out;
  }

  /** Where a client that last received the part at `offset` continues: after that part (else at `offset`). */
  resumeOffset(offset: number): number {
    const i = this.#partAt(offset);
    if (i !== -1 && this.#starts[i] === offset) return offset + (this.#parts[i] as string).length;
    return Math.min(Math.max(offset, this.#base), this.#length);
  }

  /** Resolves at the next append or end. */
  changed(): Promise<void> {
    this.#changed ??= new Promise((resolve) => {
      this.#wake = resolve;
    });
    return this.#changed;
  }

  /** The answer as events for one reader: `started`, one delta per part from `from`, then the end. */
  read(from: number): AsyncIterable<TurnEvent> {
    const answer = this;
    let offset = Math.max(from, this.#base);
    let started = false;
    let done = false;
    let ended = false;
    const iterator: AsyncIterator<TurnEvent> = {
      async next() {
        for (;;) {
          if (ended) {
            await answer.#stored.catch(() => {});
            return DONE;
          }
          if (done) return DONE;
          if (!started) {
            started = true;
            return { done: false, value: { type: 'started', head: answer.head } };
          }
          if (offset < answer.length) {
            const [start, text] = answer.#partFrom(offset);
            offset = start + text.length;
            return { done: false, value: { type: 'delta', text, offset: start } };
          }
          const final = answer.final;
          if (final !== undefined) {
            ended = true;
            return { done: false, value: final };
          }
          await answer.changed();
        }
      },
      async return() {
        done = true;
        ended = false;
        return DONE;
      },
    };
    return { [Symbol.asyncIterator]: () => iterator };
  }

  #push(text: string): void {
    this.#parts.push(text);
    this.#starts.push(this.#length);
    this.#length += text.length;
  }

  /** The part holding `offset` (cut to start there), for a reader. */
  #partFrom(offset: number): [number, string] {
    const i = this.#partAt(offset);
    const start = this.#starts[i] as number;
    const text = this.#parts[i] as string;
    return start < offset ? [offset, text.slice(offset - start)] : [start, text];
  }

  /** Index of the part holding `offset`, or -1 when it is outside the text held. */
  #partAt(offset: number): number {
    if (offset < this.#base || offset >= this.#length) return -1;
    // Readers that keep up ask for the last part or two: search from the end.
    let i = this.#starts.length - 1;
    while (i > 0 && (this.#starts[i] as number) > offset) i--;
    return i;
  }

  #notify(): void {
    const wake = this.#wake;
    this.#changed = undefined;
    this.#wake = undefined;
    wake?.();
  }
}

/** The first `length` UTF-16 units of `text`, never ending inside a surrogate pair. */
export function cutAt(text: string, length: number): string {
  if (length <= 0) return '';
  if (text.length <= length) return text;
  const code = text.charCodeAt(length - 1);
  return text.slice(0, code >= 0xd800 && code <= 0xdbff ? length - 1 : length);
}
