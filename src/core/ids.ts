import { randomBytes } from 'node:crypto';

/**
 * Ids are prefixed by kind (`itp_`, `exe_`, `reg_`) and carry 80 random bits, so they are
 * unguessable. Random bytes are drawn in batches: one syscall per few hundred ids.
 */
let pool = Buffer.alloc(0);
let offset = 0;

function randomHex(bytes: number): string {
  if (offset + bytes > pool.length) {
    pool = randomBytes(4096);
    offset = 0;
  }
  const s = pool.toString('hex', offset, offset + bytes);
  offset += bytes;
  return s;
}

export const newInterpreterId = (): string => `itp_${randomHex(10)}`;
export const newExecutionId = (): string => `exe_${randomHex(10)}`;
/** Prefix for registration ids minted inside one interpreter (`reg_<prefix><counter>`). */
export const newRegistrationPrefix = (): string => `${randomHex(8)}_`;
export const newToken = (): string => randomHex(16);
/** A recipe step's id: replicas tell the steps they ran from those they have yet to replay. */
export const newStepId = (): string => `stp_${randomHex(10)}`;
