// What drive.mjs and relay.mjs share: the step protocol on stdout (one JSON line per
// step, {"step", "ok": true, …fields} or {"step", "ok": false, "error",
// "error_description"}), and an in-memory storage for the SDK, whose default storage is
// the browser's window.localStorage.

// Keep stdout for the step lines: the SDK logs some failures with console.log.
export const emit = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`)
console.log = console.error

/** The SDK's SimpleStorage (async and sync variants), in memory. */
export class MemoryStorage {
  constructor() {
    this.map = new Map()
  }
  async getItem(key) {
    return this.getItemSync(key)
  }
  async setItem(key, value) {
    this.setItemSync(key, value)
  }
  async removeItem(key) {
    this.removeItemSync(key)
  }
  getItemSync(key) {
    return this.map.has(key) ? this.map.get(key) : null
  }
  setItemSync(key, value) {
    this.map.set(key, String(value))
  }
  removeItemSync(key) {
    this.map.delete(key)
  }
}

let failed = 0

/** Ends the run: a `done` line, exit status 0 only if every step passed. */
export function done() {
  emit({ step: 'done', ok: failed === 0, failed })
  process.exit(failed === 0 ? 0 : 1)
}

/** The SDK rejects with plain objects ({error, error_description, error_uri}) or Errors. */
export function describe(err) {
  if (err instanceof Error) {
    return { error: 'exception', error_description: `${err.name}: ${err.message}` }
  }
  if (err && typeof err === 'object') {
    const { error, error_description: description, error_uri: uri } = err
    return { error, error_description: description, error_uri: uri }
  }
  return { error: 'thrown', error_description: String(err) }
}

/** Runs one step; `fn` returns the fields to report, or throws. */
export async function step(name, fn) {
  try {
    const fields = await fn()
    emit({ step: name, ok: true, ...fields })
    return fields
  } catch (err) {
    failed += 1
    emit({ step: name, ok: false, ...describe(err) })
    return null
  }
}

/** A step that passes when the SDK call fails with the `expected` error code. */
export async function expectError(name, expected, fn) {
  return step(name, async () => {
    let result
    try {
      result = await fn()
    } catch (err) {
      const got = describe(err)
      check(got.error === expected, `expected error ${expected}, got ${JSON.stringify(got)}`)
      return { expected_error: got.error, error_description: got.error_description }
    }
    throw new Error(`expected error ${expected}, got success: ${JSON.stringify(result)}`)
  })
}

export function check(cond, message) {
  if (!cond) {
    throw new Error(message)
  }
}

/** Exits on a fatal error outside any step. */
export function fatal(err) {
  emit({ step: 'fatal', ok: false, ...describe(err) })
  process.exit(1)
}
