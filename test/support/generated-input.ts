/**
 * Deterministic generated input for the G7 tests: messages of every shape a JavaScript caller can
 * hand to `outbox.add`, and message ids of every shape a broker can deliver.
 */
import type { OutboxMessageInput } from '../../src/index.js'

/** A small deterministic generator (mulberry32), so a failure can be replayed from its seed. */
export function random(seed: number): () => number {
  let a = seed
  return () => {
    a = (a + 0x6d2b79f5) | 0
    let t = Math.imul(a ^ (a >>> 15), 1 | a)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** Text of any UTF-16 code units: NUL, lone surrogates, trailing spaces, astral pairs. */
export function anyText(r: () => number, maxLength = 12): string {
  const unit = () => {
    const pick = r()
    if (pick < 0.05) return '\u0000'
    if (pick < 0.1) return ' '
    if (pick < 0.15) return '\ud83d\ude00'
    return String.fromCharCode(Math.floor(r() * 0xffff))
  }
  return Array.from({ length: Math.floor(r() * maxLength) }, unit).join('')
}

export function anyValue(r: () => number, depth = 0): unknown {
  const pick = Math.floor(r() * 16)
  switch (pick) {
    case 0:
      return undefined
    case 1:
      return null
    case 2:
      return r() * 1e6 - 5e5
    case 3:
      return [Number.NaN, Number.POSITIVE_INFINITY, -0, 2 ** 53][Math.floor(r() * 4)]
    case 4:
      return anyText(r)
    case 5:
      return `order-${Math.floor(r() * 100)}`
    case 6:
      return r() > 0.5
    case 7:
      return BigInt(Math.floor(r() * 100))
    case 8:
      return new Uint8Array(Math.floor(r() * 64))
    case 9:
      return new Date()
    case 10:
      return () => 1
    case 11:
      return Symbol('s')
    case 12:
    case 13:
      return depth > 3
        ? {}
        : Object.fromEntries(Array.from({ length: 3 }, () => [anyText(r) || 'k', anyValue(r, depth + 1)]))
    default:
      return depth > 3 ? [] : Array.from({ length: 3 }, () => anyValue(r, depth + 1))
  }
}

/** Header values with the characters databases refuse or fold (NUL, lone surrogates) mixed in. */
function anyHeaders(r: () => number, i: number): unknown {
  const pick = r()
  if (pick < 0.4) return { 'x-a': String(i), 'x-text': anyText(r, 8) }
  if (pick < 0.6) return { 'x-a': `${i}\u0000` }
  if (pick < 0.8) return anyValue(r)
  return { 'x-trailing': 'v ', 'x-emoji': '\ud83d\ude00' }
}

function anyContentType(r: () => number): unknown {
  const shapes = ['application/avro', 'text/plain; charset=utf-8', 'application', 'a/b\u0000', '', ' a/b']
  return r() > 0.5 ? shapes[Math.floor(r() * shapes.length)] : anyValue(r)
}

/** Message `i` of a generated run: mostly plausible, often hostile in one field. */
export function anyMessage(r: () => number, i: number): OutboxMessageInput {
  return {
    topic: r() > 0.3 ? 'orders' : anyValue(r),
    key: r() > 0.3 ? `order-${i}${r() > 0.8 ? ' ' : ''}` : anyValue(r),
    type: r() > 0.3 ? 'OrderCreated' : anyValue(r),
    payload: anyValue(r),
    ...(r() > 0.5 ? { headers: anyHeaders(r, i) } : {}),
    ...(r() > 0.8 ? { id: anyValue(r) } : {}),
    ...(r() > 0.8 ? { contentType: anyContentType(r) } : {}),
  } as OutboxMessageInput
}

/** A message id as a broker may deliver it: a UUID, a padded one, text of any code units, too long. */
export function anyMessageId(r: () => number, i: number): string {
  const pick = r()
  if (pick < 0.3) return crypto.randomUUID()
  // Pairs that differ only by trailing spaces, which a PAD SPACE collation takes for one id.
  if (pick < 0.4) return `id-${Math.floor(i / 4)}`
  if (pick < 0.5) return `id-${Math.floor(i / 4)}${' '.repeat(1 + Math.floor(r() * 2))}`
  if (pick < 0.6) return 'x'.repeat(200 + Math.floor(r() * 100))
  return anyText(r, 40) || `empty-${i}`
}
