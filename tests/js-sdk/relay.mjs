#!/usr/bin/env node
// The official JS SDK, @cloudbase/oauth, with the gateway as its apiOrigin: its calls go
// through the gateway's CloudBase relay (/auth/v1/), and a protected route of the same
// gateway (/api/whoami, the built-in echo) is called with the SDK's access token, as a web
// app calls its API. With an hour of cache, a token refused right after a sign-out was
// purged by the relay; nothing else would refuse it that soon.
//
// Usage: node relay.mjs http://GATEWAY:PORT [http://OTHER-REPLICA:PORT …]
// With other replicas (sharing the first one's Redis tier), the SDK still talks to the
// first, while every protected call is made on every replica: each caches the token, and
// after a sign-out through the first the old token is refused on the others first (they
// can only have heard of it through the purge the first published), then on the first.
// Environment: CLOUDBASE_ENV (default "js-sdk-env"), RELAY_PASSWORD (every seeded user's
// password, default "relay-password-1"). Users: relay-signout, relay-password,
// relay-all, relay-device, relay-outside.
//
// Output: the step protocol of steps.mjs. Tokens that the Rust side checks further are
// reported in the step lines.

import { CloudbaseOAuth } from '@cloudbase/oauth'

import { MemoryStorage, check, done, fatal, step } from './steps.mjs'

const replicas = process.argv.slice(2).map((o) => o.replace(/\/+$/, ''))
if (replicas.length === 0 || !replicas.every((o) => /^https?:\/\/[^/]+$/.test(o))) {
  console.error('usage: node relay.mjs http://GATEWAY:PORT [http://OTHER-REPLICA:PORT …]')
  process.exit(2)
}
const origin = replicas[0]
const others = replicas.slice(1)
const env = process.env.CLOUDBASE_ENV || 'js-sdk-env'
const password = process.env.RELAY_PASSWORD || 'relay-password-1'

/** One browser: its own storage, hence its own device id and session. */
function device() {
  const oauth = new CloudbaseOAuth({
    env,
    clientId: env,
    apiOrigin: origin,
    apiPath: '/auth',
    storage: new MemoryStorage(),
  })
  oauth.initializeSession()
  return { auth: oauth.authApi, client: oauth.oauth2client }
}

/** The app's API call: GET /api/whoami on `at` (default: the SDK's gateway) with a token. */
async function api(token, at = origin) {
  const resp = await fetch(`${at}/api/whoami`, {
    headers: { authorization: `Bearer ${token}` },
  })
  const text = await resp.text()
  let body = null
  try {
    body = JSON.parse(text)
  } catch {
    body = text
  }
  return { status: resp.status, body }
}

/** The identity the gateway put on the request, as the echo upstream saw it. */
function userId(answer) {
  const headers = (answer.body && answer.body.headers) || {}
  return headers['x-user-id']
}

/** A token's protected call on every replica answered 200 with its user's identity. */
async function served(name, token, sub) {
  for (const at of replicas) {
    const seen = await api(token, at)
    check(seen.status === 200, `${name}: the protected route at ${at} answered ${seen.status}`)
    check(userId(seen) === sub, `${name}: identity ${userId(seen)} at ${at}, expected ${sub}`)
  }
  return { status: 200 }
}

/** A signed-in device, and its protected call answered 200 with its identity everywhere. */
async function signedIn(name, username) {
  const d = device()
  const c = await d.auth.signIn({ username, password })
  await served(name, c.access_token, c.sub)
  return { ...d, token: c.access_token, sub: c.sub }
}

/** The old token's next protected call on each replica, the others first: 401 at once. */
async function refused(name, token) {
  let seen = null
  for (const at of [...others, origin]) {
    seen = await api(token, at)
    check(seen.status === 401, `${name}: the old token got ${seen.status} at ${at}, expected 401`)
  }
  return { status: seen.status, code: seen.body && seen.body.code }
}

async function main() {
  // signOut(): POST /auth/v1/revoke {token} through the relay.
  let a = null
  await step('signout_signed_in', async () => {
    a = await signedIn('signout', 'relay-signout')
    return { sub: a.sub, access_token: a.token }
  })
  await step('signout', async () => {
    check(a, 'not signed in')
    const resp = await a.auth.signOut()
    check(!(await a.auth.hasLoginState()), 'still signed in after signOut')
    return { response: resp }
  })
  await step('signout_old_token_refused', async () => refused('signout', a.token))

  // Password change on one device; the other device's session ends.
  let mine = null
  let other = null
  await step('password_signed_in', async () => {
    mine = await signedIn('password (this device)', 'relay-password')
    other = await signedIn('password (other device)', 'relay-password')
    return { sub: mine.sub }
  })
  await step('password_changed', async () => {
    check(mine, 'not signed in')
    // sudo with the old password, then PATCH /user/password with the sudo token.
    const resp = await mine.auth.updatePasswordByOld({
      old_password: password,
      new_password: `${password}-new`,
    })
    return { response: resp }
  })
  await step('password_other_device_refused', async () => refused('password', other.token))
  await step('password_this_device_still_served', async () =>
    served("this device's own session", mine.token, mine.sub),
  )
  await step('password_new_one_signs_in', async () => {
    const c = await device().auth.signIn({ username: 'relay-password', password: `${password}-new` })
    return { sub: c.sub }
  })

  // revokeAllDevices(): DELETE /auth/v1/user/revoke/all, with a second device signed in.
  let first = null
  let second = null
  await step('revoke_all_signed_in', async () => {
    first = await signedIn('revoke all (first)', 'relay-all')
    second = await signedIn('revoke all (second)', 'relay-all')
    return { sub: first.sub }
  })
  await step('revoke_all', async () => {
    check(first, 'not signed in')
    await first.auth.revokeAllDevices()
    return {}
  })
  await step('revoke_all_second_device_refused', async () => refused('revoke all', second.token))
  await step('revoke_all_first_device_refused', async () => refused('revoke all', first.token))

  // revokeDevice({device_id}): DELETE /auth/v1/user/authorized/devices/{id}.
  let keeper = null
  let lost = null
  await step('revoke_device_signed_in', async () => {
    keeper = await signedIn('revoke device (keeper)', 'relay-device')
    lost = await signedIn('revoke device (lost)', 'relay-device')
    return { lost_device: await lost.client.getDeviceId() }
  })
  await step('revoke_device', async () => {
    check(keeper, 'not signed in')
    await keeper.auth.revokeDevice({ device_id: await lost.client.getDeviceId() })
    return {}
  })
  await step('revoke_device_lost_device_refused', async () => refused('revoke device', lost.token))
  await step('revoke_device_keeper_still_served', async () =>
    served('the keeper', keeper.token, keeper.sub),
  )

  // A session signed in through the relay, for the Rust side to revoke outside it.
  await step('outside_signed_in', async () => {
    const d = await signedIn('outside', 'relay-outside')
    return { sub: d.sub, access_token: d.token }
  })

  done()
}

main().catch(fatal)
