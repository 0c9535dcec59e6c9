/**
 * src/core declares the Standard Schema v1 interface itself (published types need no extra
 * package). tsc checks here that it stays interchangeable with `@standard-schema/spec`.
 */
import { expect, test } from 'bun:test'
import type { StandardSchemaV1 as Spec } from '@standard-schema/spec'
import * as v from 'valibot'
import { z } from 'zod'
import type { StandardSchemaV1 as Ours } from '../../src/index.js'

type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false
function assertType<_T extends true>(): void {}

function interchangeable(spec: Spec<{ a: string }, number>, ours: Ours<{ a: string }, number>): void {
  const asOurs: Ours<{ a: string }, number> = spec
  const asSpec: Spec<{ a: string }, number> = ours
  void asOurs
  void asSpec
  assertType<Equal<Ours.Result<number>, Spec.Result<number>>>()
  assertType<Equal<Ours.Issue, Spec.Issue>>()
  const zodSchema = z.object({ n: z.coerce.number() })
  assertType<Equal<Ours.InferInput<typeof zodSchema>, Spec.InferInput<typeof zodSchema>>>()
  assertType<Equal<Ours.InferOutput<typeof zodSchema>, Spec.InferOutput<typeof zodSchema>>>()
  const valibotSchema = v.object({ n: v.number() })
  const valibotAsOurs: Ours<{ n: number }> = valibotSchema
  void valibotAsOurs
}
void interchangeable

test('zod and valibot schemas carry the Standard Schema v1 properties the catalogue reads', () => {
  for (const schema of [z.string(), v.string()] as Ours[]) {
    expect(schema['~standard'].version).toBe(1)
    expect(typeof schema['~standard'].validate).toBe('function')
  }
})
