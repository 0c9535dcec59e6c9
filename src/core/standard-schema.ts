/**
 * The Standard Schema v1 interface (https://standardschema.dev), the part outboxkit uses.
 *
 * zod (3.24 and later), valibot (1.0 and later), arktype (2.0 and later) and other validators
 * implement it, so an event catalogue accepts their schemas without an adapter. The spec is a
 * type-only contract its authors ask consumers to copy; it is declared here rather than imported
 * from `@standard-schema/spec` so that outboxkit's published types need no extra package.
 * test/unit/standard-schema.test.ts checks that it stays interchangeable with that package.
 */
export interface StandardSchemaV1<Input = unknown, Output = Input> {
  readonly '~standard': StandardSchemaV1.Props<Input, Output>
}

export declare namespace StandardSchemaV1 {
  interface Props<Input = unknown, Output = Input> {
    /** Always 1 for this version of the spec. */
    readonly version: 1
    /** The library that made the schema, e.g. `zod` or `valibot`. */
    readonly vendor: string
    /** Validates a value; may answer synchronously or with a promise. */
    readonly validate: (
      value: unknown,
      options?: StandardSchemaV1.Options | undefined,
    ) => Result<Output> | Promise<Result<Output>>
    /** Carries the input and output types for inference only; absent at run time. */
    readonly types?: Types<Input, Output> | undefined
  }

  type Result<Output> = SuccessResult<Output> | FailureResult

  interface SuccessResult<Output> {
    readonly value: Output
    readonly issues?: undefined
  }

  interface FailureResult {
    readonly issues: ReadonlyArray<Issue>
  }

  interface Options {
    readonly libraryOptions?: Record<string, unknown> | undefined
  }

  interface Issue {
    readonly message: string
    readonly path?: ReadonlyArray<PropertyKey | PathSegment> | undefined
  }

  interface PathSegment {
    readonly key: PropertyKey
  }

  interface Types<Input = unknown, Output = Input> {
    readonly input: Input
    readonly output: Output
  }

  /** The type a schema accepts. */
  type InferInput<Schema extends StandardSchemaV1> = NonNullable<Schema['~standard']['types']>['input']
  /** The type a schema produces. */
  type InferOutput<Schema extends StandardSchemaV1> = NonNullable<Schema['~standard']['types']>['output']
}
