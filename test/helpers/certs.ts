import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** PEM files of one certificate: where they are, and their bytes. */
export interface Issued {
  certFile: string;
  keyFile: string;
  cert: Buffer;
  key: Buffer;
}

/**
 * Certificates made at run time with the openssl command (never checked in): CAs, a server
 * certificate for 127.0.0.1, and client certificates with a chosen subject CN. ECDSA P-256,
 * valid for two days. `close()` removes the files.
 */
export class TestPki {
  readonly dir = mkdtempSync(path.join(os.tmpdir(), 'isogear-pki-'));
  private serial = 1;

  /** A self-signed CA. */
  ca(name: string): Issued {
    const keyFile = path.join(this.dir, `${name}.key`);
    const certFile = path.join(this.dir, `${name}.crt`);
    this.openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', `/CN=${name}`]);
    return this.issued(certFile, keyFile);
  }

  /** A certificate with subject CN `cn` signed by `ca`; `server` adds the 127.0.0.1 and localhost names. */
  issue(ca: Issued, name: string, cn: string, server = false): Issued {
    const keyFile = path.join(this.dir, `${name}.key`);
    const csr = path.join(this.dir, `${name}.csr`);
    const certFile = path.join(this.dir, `${name}.crt`);
    const ext = path.join(this.dir, `${name}.ext`);
    writeFileSync(ext, server ? 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' : 'extendedKeyUsage=clientAuth\n');
    this.openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', keyFile, '-out', csr, '-subj', `/CN=${cn}`]);
    this.openssl(['x509', '-req', '-in', csr, '-CA', ca.certFile, '-CAkey', ca.keyFile, '-set_serial', String(this.serial++), '-out', certFile, '-days', '2', '-extfile', ext]);
    return this.issued(certFile, keyFile);
  }

  close(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }

  private issued(certFile: string, keyFile: string): Issued {
    return { certFile, keyFile, cert: readFileSync(certFile), key: readFileSync(keyFile) };
  }

  private openssl(args: string[]): void {
    execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  }
}
