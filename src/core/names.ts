/** Trigger names: 1–256 characters, letters, digits and `_ . : / @ -`, not starting with punctuation other than `_`. */
export const TRIGGER_PATTERN = '^[A-Za-z0-9_][A-Za-z0-9_.:/@-]{0,255}$';
const TRIGGER_RE = new RegExp(TRIGGER_PATTERN);
/** Interpreter names: 1–128 characters, letters, digits and `_ . -`. */
const NAME_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
/** Module specifiers: 1–256 characters with no control characters. */
const SPECIFIER_MAX = 256;
const hasControlCharacter = (s: string): boolean => {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c === 0x7f) return true;
  }
  return false;
};

export const isValidTrigger = (s: string): boolean => TRIGGER_RE.test(s);
export const isValidName = (s: string): boolean => NAME_RE.test(s);
export const isValidSpecifier = (s: string): boolean => s.length >= 1 && s.length <= SPECIFIER_MAX && !hasControlCharacter(s);
