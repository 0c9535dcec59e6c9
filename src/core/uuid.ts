/**
 * UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then random bits.
 *
 * Ids from one runtime are strictly increasing: within one millisecond the 12-bit `rand_a` field
 * is a counter (RFC 9562 §6.2, method 1) seeded randomly each millisecond, and a clock that steps
 * back is ignored. Only Web Crypto is used, so this runs on every runtime.
 */

let lastMillis = -1
let counter = 0

const HEX: string[] = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'))

export function uuidv7(now: number = Date.now()): string {
  const bytes = new Uint8Array(16)
  crypto.getRandomValues(bytes)

  let millis = Math.max(now, lastMillis)
  if (millis === lastMillis) {
    counter++
    if (counter > 0xfff) {
      // Counter exhausted within this millisecond: borrow the next one.
      millis++
      counter = bytes[6]! & 0x07
    }
  } else {
    // Leave headroom above the seed so a burst in one millisecond rarely overflows.
    counter = ((bytes[6]! & 0x07) << 8) | bytes[7]!
  }
  lastMillis = millis

  bytes[0] = Math.floor(millis / 2 ** 40) & 0xff
  bytes[1] = Math.floor(millis / 2 ** 32) & 0xff
  bytes[2] = (millis >>> 24) & 0xff
  bytes[3] = (millis >>> 16) & 0xff
  bytes[4] = (millis >>> 8) & 0xff
  bytes[5] = millis & 0xff
  bytes[6] = 0x70 | ((counter >>> 8) & 0x0f)
  bytes[7] = counter & 0xff
  bytes[8] = 0x80 | (bytes[8]! & 0x3f)

  let out = ''
  for (let i = 0; i < 16; i++) {
    if (i === 4 || i === 6 || i === 8 || i === 10) out += '-'
    out += HEX[bytes[i]!]
  }
  return out
}

const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

/** True for a lower-case canonical UUID string of any version. */
export function isUuid(value: string): boolean {
  return UUID_PATTERN.test(value)
}

/** The creation time embedded in a UUIDv7, in Unix milliseconds. */
export function uuidv7Timestamp(id: string): number {
  return Number.parseInt(id.slice(0, 8) + id.slice(9, 13), 16)
}
