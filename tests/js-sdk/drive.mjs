#!/usr/bin/env node
// Drives a CloudBase Auth v2 endpoint (the emulator) with the official JS SDK,
// @cloudbase/oauth, the way a web page does: username + password sign-in, user info, a
// forced token refresh (and a replay of the rotated-out refresh token, which ends the
// session), phone verification + sign-up, sign-out with a redirect, sign-in with a
// verification code, anonymous sign-in and sign-out.
//
// Usage: node drive.mjs http://127.0.0.1:PORT      (or EMULATOR_URL=http://…)
// Optional environment: CLOUDBASE_ENV (default "js-sdk-env"), CLOUDBASE_CLIENT_ID
// (default: the env id, as the SDK does), SDK_USERNAME / SDK_PASSWORD (the seeded user;
// default "sdk-user" / "sdk-password-1"), SDK_PHONE (an unregistered number, default
// "13800000000", given bare so the SDK adds "+86 "), SDK_CODE (the emulator's
// verification code, default "000000").
//
// Output: one JSON line per step on stdout, {"step", "ok": true, …fields} or
// {"step", "ok": false, "error", "error_description"}, then {"step": "done", "ok",
// "failed"}. The exit status is 0 only if every step passed. Whatever the SDK itself logs
// goes to stderr.
//
// What the SDK needs in Node: nothing beyond Node 18+. It calls the global fetch, and the
// only browser API it relies on is window.localStorage (its default storage), so an
// in-memory SimpleStorage is passed instead (steps.mjs, with the step protocol).

import { CloudbaseOAuth } from '@cloudbase/oauth'

import { MemoryStorage, check, done, expectError, fatal, step } from './steps.mjs'

const origin = (process.argv[2] || process.env.EMULATOR_URL || '').replace(/\/+$/, '')
if (!/^https?:\/\/[^/]+$/.test(origin)) {
  console.error('usage: node drive.mjs http://HOST:PORT   (or set EMULATOR_URL)')
  process.exit(2)
}
const env = process.env.CLOUDBASE_ENV || 'js-sdk-env'
const clientId = process.env.CLOUDBASE_CLIENT_ID || env
const username = process.env.SDK_USERNAME || 'sdk-user'
const password = process.env.SDK_PASSWORD || 'sdk-password-1'
const phone = process.env.SDK_PHONE || '13800000000'
const code = process.env.SDK_CODE || '000000'

const oauth = new CloudbaseOAuth({
  env,
  clientId,
  apiOrigin: origin,
  apiPath: '/auth',
  storage: new MemoryStorage(),
})
oauth.initializeSession()
const auth = oauth.authApi
const client = oauth.oauth2client

function tokenFields(c) {
  check(c && typeof c.access_token === 'string' && c.access_token, 'no access_token')
  check(typeof c.refresh_token === 'string' && c.refresh_token, 'no refresh_token')
  check(typeof c.expires_in === 'number' && c.expires_in > 0, 'no expires_in')
  return {
    sub: c.sub,
    scope: c.scope,
    token_type: c.token_type,
    expires_in: c.expires_in,
    access_token: c.access_token,
    refresh_token: c.refresh_token,
  }
}

function userFields(u) {
  check(u && u.sub, 'user info without sub')
  check(u.uid === u.sub, 'the SDK did not copy sub to uid')
  return {
    sub: u.sub,
    username: u.username,
    name: u.name,
    phone_number: u.phone_number,
    status: u.status,
  }
}

/**
 * Server-side check that the SDK's sign-out took effect: the documented introspection
 * call (not an SDK method) answers `{}` for a dead token.
 */
async function introspect(token) {
  const resp = await fetch(`${origin}/auth/v1/token/introspect`, {
    headers: { authorization: `Bearer ${token}` },
  })
  return resp.json()
}

/** getVerification (bare number: the SDK adds "+86 ") then verify with the code. */
async function verifyPhone(prefix) {
  const sent = await step(`${prefix}verification`, async () => {
    const r = await auth.getVerification({ phone_number: phone })
    check(r.verification_id, 'no verification_id')
    return { verification_id: r.verification_id, is_user: r.is_user, expires_in: r.expires_in }
  })
  return step(`${prefix}verify`, async () => {
    check(sent, 'no verification to verify')
    const r = await auth.verify({ verification_id: sent.verification_id, verification_code: code })
    check(r.verification_token, 'no verification_token')
    return { verification_token: r.verification_token, expires_in: r.expires_in }
  })
}

async function main() {
  await step('signin', async () => tokenFields(await auth.signIn({ username, password })))

  await expectError('signin_wrong_password', 'invalid_password', () =>
    // A second client, so the failure does not touch the signed-in one.
    new CloudbaseOAuth({ env, clientId, apiOrigin: origin, storage: new MemoryStorage() }).authApi.signIn({
      username,
      password: `${password}-wrong`,
    }),
  )

  await step('user_info', async () => userFields(await auth.getUserInfo()))

  const refreshed = await step('refresh', async () => {
    const before = await auth.getCredentials()
    const after = await auth.refreshTokenForce({})
    const stored = await auth.getCredentials()
    check(stored.access_token === after.access_token, 'the refreshed credentials were not stored')
    check(after.access_token !== before.access_token, 'the access token did not change')
    check(after.refresh_token !== before.refresh_token, 'the refresh token did not rotate')
    return { ...tokenFields(after), previous_refresh_token: before.refresh_token }
  })

  await step('user_info_after_refresh', async () => userFields(await auth.getUserInfo()))

  // A rotated-out refresh token comes back (as a thief's copy would): refused, and the
  // whole session ends (RFC 9700 §4.14.2), so the SDK's current tokens die too.
  await expectError('refresh_replay_rejected', 'invalid_grant', async () => {
    check(refreshed, 'no refresh to replay')
    return auth.grantToken({ grant_type: 'refresh_token', refresh_token: refreshed.previous_refresh_token })
  })

  await expectError('refresh_after_replay_rejected', 'invalid_grant', async () => {
    check(refreshed, 'no refresh to replay')
    return auth.grantToken({ grant_type: 'refresh_token', refresh_token: refreshed.refresh_token })
  })

  const verified = await verifyPhone('')

  await step('signup', async () => {
    check(verified, 'no verification token to sign up with')
    const c = await auth.signUp({
      phone_number: `+86 ${phone.replace(/^\+86\s*/, '')}`,
      verification_code: code,
      verification_token: verified.verification_token,
      username: 'sdk-signup-user',
      password: 'sdk-signup-password',
      name: 'SDK 新用户',
    })
    return tokenFields(c)
  })

  await step('signup_user_info', async () => userFields(await auth.getUserInfo()))

  // signOut with parameters goes to POST /v1/user/signout (Bearer), not /v1/revoke; the
  // SDK swallows its errors, so the effect is checked on the server.
  await step('signout_redirect', async () => {
    const token = await client.getAccessToken()
    const resp = await auth.signOut({ redirect_uri: 'http://localhost:3000/signed-out' })
    check(!(await auth.hasLoginState()), 'still signed in after signOut')
    const seen = await introspect(token)
    check(Object.keys(seen).length === 0, `the token is still active: ${JSON.stringify(seen)}`)
    return { signed_out_access_token: token, response: resp }
  })

  const otp = await verifyPhone('otp_')
  await step('otp_signin', async () => {
    check(otp, 'no verification token to sign in with')
    return tokenFields(await auth.signIn({ verification_token: otp.verification_token }))
  })
  await step('otp_user_info', async () => userFields(await auth.getUserInfo()))

  await step('anonymous', async () => {
    const c = await auth.signInAnonymously()
    return { ...tokenFields(c), login_scope: await auth.loginScope() }
  })

  await step('anonymous_user_info', async () => userFields(await auth.getUserInfo()))

  // signOut without parameters: POST /v1/revoke {token} with no Authorization header.
  await step('signout', async () => {
    const token = await client.getAccessToken()
    const resp = await auth.signOut()
    check(!(await auth.hasLoginState()), 'still signed in after signOut')
    const seen = await introspect(token)
    check(Object.keys(seen).length === 0, `the token is still active: ${JSON.stringify(seen)}`)
    return { revoked_access_token: token, response: resp }
  })

  done()
}

main().catch(fatal)
