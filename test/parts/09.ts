import { test } from 'node:test';
import { importPart } from '../support/parts.ts';

const imported = importPart(import.meta.url);
test('the part imports its test files', () => imported);
