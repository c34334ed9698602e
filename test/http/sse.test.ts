import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { formatSse } from '../../lib/http/sse.ts';

describe('formatSse()', () => {
  it('formatSse() writes event and JSON data, ending with a blank line', () => {
    assert.equal(formatSse({ event: 'delta', data: { text: 'Hel' } }), 'event: delta\ndata: {"text":"Hel"}\n\n');
  });

  it('formatSse() writes comment, event, id and data in that order', () => {
    assert.equal(formatSse({ data: 'x', id: '7', event: 'e', comment: 'c' }), ': c\nevent: e\nid: 7\ndata: x\n\n');
  });

  it('formatSse() writes a heartbeat comment alone', () => {
    assert.equal(formatSse({ comment: 'ping' }), ': ping\n\n');
  });

  it('formatSse() splits multi-line string data into one data field per line, for every kind of line break', () => {
    assert.equal(formatSse({ data: 'a\nb\r\nc\rd' }), 'data: a\ndata: b\ndata: c\ndata: d\n\n');
  });

  it('formatSse() keeps empty lines of string data as empty data fields', () => {
    assert.equal(formatSse({ data: '\n' }), 'data: \ndata: \n\n');
  });

  it('formatSse() escapes line breaks inside JSON data', () => {
    assert.equal(formatSse({ data: { text: 'a\nb\r' } }), 'data: {"text":"a\\nb\\r"}\n\n');
  });

  it('formatSse() serialises non-string JSON data', () => {
    assert.equal(formatSse({ data: 42 }), 'data: 42\n\n');
    assert.equal(formatSse({ data: null }), 'data: null\n\n');
    assert.equal(formatSse({ data: [1, 'two'] }), 'data: [1,"two"]\n\n');
  });

  for (const field of ['event', 'id', 'comment'] as const) {
    for (const bad of ['a\nb', 'a\rb', 'a\r\nb', '\n']) {
      it(`formatSse() throws TypeError for ${field} ${JSON.stringify(bad)}`, () => {
        assert.throws(() => formatSse({ [field]: bad, data: 'x' }), TypeError);
      });
    }
  }

  it('formatSse() throws TypeError for an id containing NUL', () => {
    assert.throws(() => formatSse({ id: 'a\0b', data: 'x' }), TypeError);
  });

  it('formatSse() throws TypeError for an event with no field', () => {
    assert.throws(() => formatSse({}), TypeError);
  });

  it('formatSse() throws TypeError for data JSON cannot represent', () => {
    assert.throws(() => formatSse({ data: () => 1 }), TypeError);
    assert.throws(() => formatSse({ data: 1n }), TypeError);
  });
});
