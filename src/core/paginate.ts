import { InvalidArgumentError } from './errors';
import type { Page, PageRequest } from './types';

/**
 * Paging for the List calls: items are ordered by a sequence number given at creation, and a
 * page token is the last sequence number a page held (opaque to clients).
 */

const DEFAULT_PAGE_SIZE = 100;
const MAX_PAGE_SIZE = 1000;

function encodeToken(seq: number): string {
  return Buffer.from(`s:${seq}`).toString('base64url');
}

function decodeToken(token: string): number {
  const text = Buffer.from(token, 'base64url').toString('utf8');
  const m = /^s:(\d{1,15})$/.exec(text);
  if (!m) throw new InvalidArgumentError('page_token is not a token this server issued');
  return Number(m[1]);
}

/**
 * One page of the `items` that `keep` accepts, after `req.pageToken`, in sequence order. With a
 * `budget`, a page also ends before the item that would take the sum of `budget.cost` past
 * `budget.max` (it always holds at least one item): pages of large items stay within a message.
 */
export function paginate<T>(items: Iterable<T>, seqOf: (t: T) => number, keep: (t: T) => boolean, req: PageRequest, budget?: { cost: (t: T) => number; max: number }): Page<T> {
  const size = req.pageSize ?? 0;
  if (!Number.isInteger(size) || size < 0) throw new InvalidArgumentError('page_size must not be negative');
  if (size > MAX_PAGE_SIZE) throw new InvalidArgumentError(`page_size must be at most ${MAX_PAGE_SIZE}`);
  const limit = size === 0 ? DEFAULT_PAGE_SIZE : size;
  const after = req.pageToken ? decodeToken(req.pageToken) : 0;
  const out: T[] = [];
  let more = false;
  let spent = 0;
  for (const item of items) {
    if (seqOf(item) <= after || !keep(item)) continue;
    const cost = budget ? budget.cost(item) : 0;
    if (out.length === limit || (budget && out.length > 0 && spent + cost > budget.max)) {
      more = true;
      break;
    }
    spent += cost;
    out.push(item);
  }
  return { items: out, nextPageToken: more ? encodeToken(seqOf(out[out.length - 1])) : '' };
}
