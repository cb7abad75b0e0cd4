import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync, statSync, unwatchFile, watchFile } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { PeerCertificate } from 'node:tls';
import { UnauthenticatedError } from '../core/errors';
import { isValidName } from '../core/names';
import { DEFAULT_TENANT, QUOTA_NAMES, type TenantQuotas } from '../core/tenants';

/** Who a request is from: the tenant its API key belongs to, and that tenant's quota overrides. */
export interface Tenant {
  name: string;
  quotas: TenantQuotas;
}

/** Resolves the `authorization` metadata of a call to its tenant, or throws UnauthenticatedError. */
export interface Authenticator {
  /** True when no keys file is configured: every caller is the default tenant. */
  readonly open: boolean;
  /** `peer`: the client certificate, when the connection is mTLS (verified against the client CA). */
  authenticate(authorization: readonly unknown[], peer?: PeerCertificate): Tenant;
}

export interface KeysLogger {
  info(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

/** The keys file is unreadable or malformed; the message says where and why (never a key). */
export class KeysFileError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KeysFileError';
  }
}

/** Longest `Bearer` credential looked at; anything longer is not a key this server issued. */
const MAX_KEY_CHARS = 4096;
const SHA256_HEX = /^[0-9a-fA-F]{64}$/;

interface KeyEntry {
  digest: Buffer;
  tenant: Tenant;
}

/** Without a keys file: everyone is the default tenant (the server warns at start-up). */
export const OPEN_ACCESS: Authenticator = {
  open: true,
  authenticate: () => ({ name: DEFAULT_TENANT, quotas: {} }),
};

/**
 * Parses the keys file: `{"tenants": [{"name", "keySha256", "quotas"?}]}`. Strict: unknown
 * fields are refused (a misspelt quota must not silently mean "no quota"). A tenant may be listed
 * more than once, with one key per entry, to rotate keys; its entries must then agree on quotas.
 * No two entries may share a key.
 */
export function parseKeysFile(text: string): KeyEntry[] {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new KeysFileError(`not valid JSON (${err instanceof Error ? err.message : String(err)})`);
  }
  if (!isObject(doc)) throw new KeysFileError('the top level must be an object with a "tenants" array');
  for (const k of Object.keys(doc)) if (k !== 'tenants') throw new KeysFileError(`unknown top-level field "${k}" (only "tenants" is allowed)`);
  const tenants = doc.tenants;
  if (!Array.isArray(tenants)) throw new KeysFileError('"tenants" must be an array');
  const entries: KeyEntry[] = [];
  const byName = new Map<string, string>();
  const digests = new Set<string>();
  tenants.forEach((t: unknown, i: number) => {
    const at = `tenants[${i}]`;
    if (!isObject(t)) throw new KeysFileError(`${at} must be an object`);
    for (const k of Object.keys(t)) {
      if (k !== 'name' && k !== 'keySha256' && k !== 'quotas') throw new KeysFileError(`${at} has unknown field "${k}" (allowed: name, keySha256, quotas)`);
    }
    if (typeof t.name !== 'string' || !isValidName(t.name)) {
      throw new KeysFileError(`${at}.name must be 1-128 characters of letters, digits, "_", "." and "-", starting with a letter, digit or "_"`);
    }
    if (typeof t.keySha256 !== 'string' || !SHA256_HEX.test(t.keySha256)) {
      throw new KeysFileError(`${at}.keySha256 must be 64 hex digits: the SHA-256 of the key, never the key itself`);
    }
    const hex = t.keySha256.toLowerCase();
    if (digests.has(hex)) throw new KeysFileError(`${at}.keySha256 is already used by another entry: every key belongs to one tenant`);
    digests.add(hex);
    const quotas = parseQuotas(t.quotas, `${at}.quotas`);
    const canonical = JSON.stringify(QUOTA_NAMES.map((q) => quotas[q] ?? null));
    const earlier = byName.get(t.name);
    if (earlier !== undefined && earlier !== canonical) {
      throw new KeysFileError(`${at}: tenant "${t.name}" is listed again with different quotas (entries of one tenant must agree)`);
    }
    byName.set(t.name, canonical);
    entries.push({ digest: Buffer.from(hex, 'hex'), tenant: { name: t.name, quotas } });
  });
  return entries;
}

function parseQuotas(raw: unknown, at: string): TenantQuotas {
  if (raw === undefined) return {};
  if (!isObject(raw)) throw new KeysFileError(`${at} must be an object`);
  const out: TenantQuotas = {};
  for (const [k, v] of Object.entries(raw)) {
    if (!(QUOTA_NAMES as readonly string[]).includes(k)) throw new KeysFileError(`${at} has unknown quota "${k}" (known: ${QUOTA_NAMES.join(', ')})`);
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 1e9) throw new KeysFileError(`${at}.${k} must be a whole number from 0 to 1000000000`);
    out[k as keyof TenantQuotas] = v;
  }
  return out;
}

function indexByName(entries: KeyEntry[]): Map<string, TenantQuotas> {
  return new Map(entries.map((e) => [e.tenant.name, e.tenant.quotas]));
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * API keys from the file named by ISOGEAR_API_KEYS_FILE. Only SHA-256 digests are held; a
 * presented key is hashed and compared with every digest in constant time (no early exit), so
 * timing tells nothing about which digest, if any, is close. The file is re-read when it changes
 * (polled: a Kubernetes Secret mount swaps a symlink, which file watches miss) and on `reload()`
 * (SIGHUP); a bad file keeps the keys in force and logs why.
 */
export class ApiKeys implements Authenticator {
  readonly open = false;
  private entries: KeyEntry[];
  /** Each tenant's quotas, by name (also the set of tenants): rebuilt with the entries. */
  private byName: Map<string, TenantQuotas>;
  private watching = false;
  private firstLook: NodeJS.Timeout | undefined;
  /** The stat of the file as last read (inode, size, mtime), to tell whether it changed before the watch began. */
  private readStat: string;
  /** Reloads run one after another, each reading the file after it was asked for. */
  private queue: Promise<unknown> = Promise.resolve();
  /** Reloads that put a file in force, and that kept the previous keys (for metrics). */
  readonly reloads = { applied: 0, rejected: 0 };

  private constructor(
    readonly path: string,
    entries: KeyEntry[],
    private readonly logger?: KeysLogger,
  ) {
    this.entries = entries;
    this.byName = indexByName(entries);
    this.readStat = statOf(path);
  }

  /** Loads the file at start-up (a bad file stops start-up). */
  static load(path: string, logger?: KeysLogger): ApiKeys {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      throw new KeysFileError(`cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
    }
    try {
      return new ApiKeys(path, parseKeysFile(text), logger);
    } catch (err) {
      throw err instanceof KeysFileError ? new KeysFileError(`${path}: ${err.message}`) : err;
    }
  }

  /** The quota overrides the file gives `tenant` (none: an empty object). */
  quotasOf(tenant: string): TenantQuotas {
    return this.byName.get(tenant) ?? {};
  }

  /** True when `tenant` has at least one key. */
  hasTenant(tenant: string): boolean {
    return this.byName.has(tenant);
  }

  /** Distinct tenants with at least one key. */
  get tenantNames(): string[] {
    return [...this.byName.keys()];
  }

  authenticate(authorization: readonly unknown[]): Tenant {
    if (authorization.length === 0) {
      throw new UnauthenticatedError('missing credentials: send the metadata "authorization: Bearer <API key>"');
    }
    if (authorization.length > 1) throw new UnauthenticatedError('send exactly one "authorization" metadata entry');
    const value = authorization[0];
    const m = typeof value === 'string' ? /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(value) : null;
    if (!m) throw new UnauthenticatedError('malformed "authorization" metadata: expected "Bearer <API key>"');
    const key = m[1];
    if (key.length > MAX_KEY_CHARS) throw new UnauthenticatedError('the API key is not valid');
    const digest = createHash('sha256').update(key, 'utf8').digest();
    let found: KeyEntry | undefined;
    for (const e of this.entries) {
      // every entry is compared, whatever matched before
      if (timingSafeEqual(digest, e.digest)) found = e;
    }
    if (!found) throw new UnauthenticatedError('the API key is not valid');
    return found.tenant;
  }

  /**
   * Re-reads the file. Resolves true when the new keys are in force; false when the file was
   * rejected (the previous keys stay, the reason is logged). Calls run in turn, so a change
   * made while a read is in flight is read by the next call, never lost to the earlier one.
   */
  reload(): Promise<boolean> {
    const read = this.queue.then(() => this.readAgain());
    this.queue = read;
    return read;
  }

  /** Polls the file for changes every `intervalMs` until `close()`. */
  watch(intervalMs = 1000): void {
    if (this.watching) return;
    this.watching = true;
    // called only when the file's stat changed (content, inode, or the file came or went)
    watchFile(this.path, { interval: intervalMs, persistent: false }, () => void this.reload());
    // The poller compares each stat with its first one, taken asynchronously after this call: a
    // change made since the file was last read (a Secret swapped while the server restored its
    // interpreters, or right after watch()) would be its baseline and never be noticed. One look
    // after the first poll catches it.
    this.firstLook = setTimeout(() => {
      if (this.watching && statOf(this.path) !== this.readStat) void this.reload();
    }, intervalMs);
    this.firstLook.unref();
  }

  close(): void {
    if (!this.watching) return;
    this.watching = false;
    clearTimeout(this.firstLook);
    unwatchFile(this.path);
  }

  private async readAgain(): Promise<boolean> {
    let entries: KeyEntry[];
    try {
      const stat = statOf(this.path);
      entries = parseKeysFile(await readFile(this.path, 'utf8'));
      this.readStat = stat;
    } catch (err) {
      const why = err instanceof KeysFileError ? err.message : `cannot read it: ${(err as NodeJS.ErrnoException).code ?? String(err)}`;
      this.logger?.error({ path: this.path, reason: why, tenants: this.tenantNames.length }, 'API keys file rejected: the previous keys stay in force');
      this.reloads.rejected += 1;
      return false;
    }
    this.entries = entries;
    this.byName = indexByName(entries);
    this.reloads.applied += 1;
    this.logger?.info({ path: this.path, tenants: this.tenantNames.length, keys: entries.length }, 'API keys reloaded');
    return true;
  }
}

/** What identifies a version of the file (following symlinks): inode, size and mtime; '' when it cannot be read. */
function statOf(path: string): string {
  try {
    const s = statSync(path, { throwIfNoEntry: false });
    return s ? `${s.dev}:${s.ino}:${s.size}:${s.mtimeMs}` : '';
  } catch {
    return '';
  }
}

/**
 * ISOGEAR_TLS_CLIENT_TENANT=cn: the tenant is the subject CN of the client certificate, which
 * the TLS handshake verified against ISOGEAR_TLS_CLIENT_CA_FILE. No API key is needed; one sent
 * anyway must belong to the same tenant. With a keys file, the CN must be one of its tenants
 * (the file stays the list of tenants, and gives their quotas).
 */
export class CertificateTenants implements Authenticator {
  readonly open = false;

  constructor(private readonly keys?: ApiKeys) {}

  authenticate(authorization: readonly unknown[], peer?: PeerCertificate): Tenant {
    const cn: unknown = peer?.subject?.CN;
    if (typeof cn !== 'string' || !isValidName(cn)) {
      throw new UnauthenticatedError('the client certificate has no subject CN that names a tenant (1-128 letters, digits, "_", "." and "-")');
    }
    if (this.keys && !this.keys.hasTenant(cn)) {
      throw new UnauthenticatedError(`the client certificate's CN "${cn}" is not a tenant of the API keys file`);
    }
    if (authorization.length > 0 && this.keys) {
      const byKey = this.keys.authenticate(authorization);
      if (byKey.name !== cn) throw new UnauthenticatedError(`the API key belongs to another tenant than the client certificate ("${cn}")`);
    }
    return { name: cn, quotas: this.keys?.quotasOf(cn) ?? {} };
  }
}
