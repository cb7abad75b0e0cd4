import pino, { type Logger } from 'pino';
import type { LogLevel } from './config';

/** JSON lines on stdout; `destination` lets tests capture them. */
export function createLogger(level: LogLevel, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: 'isogear' },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination,
  );
}

export type { Logger };
