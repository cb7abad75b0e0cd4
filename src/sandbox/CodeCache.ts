import { createHash } from 'node:crypto';
import type ivm from 'isolated-vm';

/**
 * V8 code cache for module sources this server compiled before, shared by every isolate: V8's
 * cached data is isolate-independent. Keyed by the SHA-256 of the source, produced by the server
 * itself (never accepted from clients; V8 also checks the data against the source it is given),
 * and bounded in bytes, least recently used out first.
 *
 * A source gets cached data on its second compile, not its first: producing it costs time, and
 * most sources a server sees once are never seen again.
 */
export class CodeCache {
  private readonly entries = new Map<string, { data: ivm.ExternalCopy<ArrayBuffer>; size: number }>();
  /** Sources compiled once, not yet cached (bounded like the entries, by count). */
  private readonly seen = new Map<string, true>();
  private bytes = 0;
  hits = 0;
  misses = 0;
  rejected = 0;

  constructor(readonly maxBytes: number) {}

  get enabled(): boolean {
    return this.maxBytes > 0;
  }

  get sizeBytes(): number {
    return this.bytes;
  }

  get size(): number {
    return this.entries.size;
  }

  static key(source: string): string {
    return createHash('sha256').update(source).digest('base64');
  }

  /**
   * What to pass to compileModule for `key`: cached data to consume, a request to produce it
   * (second sighting), or nothing.
   */
  options(key: string): { cachedData?: ivm.ExternalCopy<ArrayBuffer>; produceCachedData?: boolean } {
    const entry = this.entries.get(key);
    if (entry) {
      this.entries.delete(key);
      this.entries.set(key, entry);
      this.hits += 1;
      return { cachedData: entry.data };
    }
    this.misses += 1;
    if (this.seen.has(key)) {
      this.seen.delete(key);
      return { produceCachedData: true };
    }
    this.seen.set(key, true);
    if (this.seen.size > 4096) this.seen.delete(this.seen.keys().next().value as string);
    return {};
  }

  /** Keeps data V8 produced for `key`; evicts the least recently used past the bound. */
  store(key: string, data: ivm.ExternalCopy<ArrayBuffer>): void {
    // One copy into this heap to learn the size; the data itself stays outside any heap.
    const size = data.copy().byteLength;
    if (size > this.maxBytes / 4 || this.entries.has(key)) {
      data.release();
      return;
    }
    this.entries.set(key, { data, size });
    this.bytes += size;
    while (this.bytes > this.maxBytes) {
      const [oldest, old] = this.entries.entries().next().value as [string, { data: ivm.ExternalCopy<ArrayBuffer>; size: number }];
      this.drop(oldest, old);
    }
  }

  /** V8 refused the data for `key` (another V8 build or flags): forget it. */
  reject(key: string): void {
    const entry = this.entries.get(key);
    if (!entry) return;
    this.rejected += 1;
    this.drop(key, entry);
  }

  private drop(key: string, entry: { data: ivm.ExternalCopy<ArrayBuffer>; size: number }): void {
    this.entries.delete(key);
    this.bytes -= entry.size;
    entry.data.release();
  }
}
