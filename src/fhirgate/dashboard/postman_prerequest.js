// fhirgate: pre-request script of the request "Get access token" (Postman collection v2.1.0).
//
// It builds and signs the client assertion of SMART Backend Services (a JWT used for client
// authentication, RFC 7523 §2.2 and §3) inside Postman's script sandbox, from the private JWK
// (RFC 7517, RFC 7518 §6) held in the variable `privateKey`. Nothing is fetched from the
// internet: SHA-384 and HMAC-SHA384 come from the sandbox's own `crypto-js`; the big-number
// arithmetic is JavaScript's BigInt.
//
//   RS384  RSASSA-PKCS1-v1_5 with SHA-384 (RFC 7518 §3.3; RFC 8017 §8.2.1 with the encoding
//          EMSA-PKCS1-v1_5 of §9.2 and the private-key operation RSASP1 of §5.2.1, using the
//          Chinese Remainder Theorem form of §5.1.2 when p, q, dp, dq and qi are present).
//   ES384  ECDSA over P-384 with SHA-384 (RFC 7518 §3.4; SEC 1 v2.0 §4.1.3; FIPS 186-4 §6.4
//          and curve P-384 of FIPS 186-4 Appendix D.1.2.4). The per-signature nonce k is
//          derived deterministically from the key and the message digest (RFC 6979 §3.2,
//          HMAC_DRBG with HMAC-SHA384), so no random number generator is needed for it. The
//          signature is r || s, 48 bytes each (RFC 7518 §3.4), not DER.
//
// The JWT is a JWS in compact serialization (RFC 7515 §7.1): base64url without padding
// (RFC 7515 §2) of the UTF-8 JSON header, ".", the claims, ".", the signature. The result goes
// into the request-local variable `clientAssertion`, which the request body refers to.
//
// BigInt arithmetic is not constant-time: this signer is meant for a developer's own machine
// (the Postman app or newman), not as a production signing service.

// A name of our own: the sandbox may already define a global CryptoJS.
const cryptoJs = require('crypto-js');

// exp = iat + 300 s: the longest lifetime the token endpoint accepts (SMART Backend Services).
const ASSERTION_LIFETIME = 300;

const MISSING_KEY_MESSAGE =
  'The private key is not in the environment: the variable "privateKey" is empty. fhirgate ' +
  'includes it only in an environment downloaded right after generating the key pair in the ' +
  'browser. Paste your private JWK (the JSON object) into the "privateKey" variable of this ' +
  'environment and send the request again.';

// ---------------------------------------------------------------------------------------------
// Bytes, base64url (RFC 4648 §5, without padding as RFC 7515 §2 requires) and BigInt.

const B64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

function base64urlEncode(bytes) {
  let out = '';
  for (let i = 0; i < bytes.length; i += 3) {
    const rest = bytes.length - i;
    const chunk = (bytes[i] << 16) | ((rest > 1 ? bytes[i + 1] : 0) << 8) |
      (rest > 2 ? bytes[i + 2] : 0);
    out += B64URL[chunk >>> 18] + B64URL[(chunk >>> 12) & 63];
    if (rest > 1) out += B64URL[(chunk >>> 6) & 63];
    if (rest > 2) out += B64URL[chunk & 63];
  }
  return out;
}

function base64urlDecode(text, what) {
  // Lenient on input: also accepts the standard alphabet and padding.
  const clean = String(text).replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
  const bytes = [];
  let acc = 0;
  let bits = 0;
  for (const ch of clean) {
    const value = B64URL.indexOf(ch);
    if (value < 0) throw new Error(`the private JWK member "${what}" is not base64url`);
    acc = (acc << 6) | value;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      bytes.push((acc >>> bits) & 0xff);
      acc &= (1 << bits) - 1;
    }
  }
  return Uint8Array.from(bytes);
}

function concatBytes(...parts) {
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

// OS2IP (RFC 8017 §4.2): big-endian bytes to a non-negative integer.
function bytesToBigInt(bytes) {
  let hex = '';
  for (const byte of bytes) hex += byte.toString(16).padStart(2, '0');
  return hex ? BigInt('0x' + hex) : 0n;
}

// I2OSP (RFC 8017 §4.1): a non-negative integer to exactly `length` big-endian bytes.
function bigIntToBytes(value, length) {
  const hex = value.toString(16).padStart(length * 2, '0');
  if (hex.length > length * 2) throw new Error('integer too large');
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = parseInt(hex.substr(i * 2, 2), 16);
  return out;
}

function byteLength(value) {
  return (value.toString(16).length + 1) >> 1;
}

function mod(a, m) {
  const r = a % m;
  return r < 0n ? r + m : r;
}

// Square-and-multiply, most significant bit first.
function modPow(base, exponent, modulus) {
  let result = 1n;
  let b = mod(base, modulus);
  for (let e = exponent; e > 0n; e >>= 1n) {
    if (e & 1n) result = (result * b) % modulus;
    b = (b * b) % modulus;
  }
  return result;
}

// Extended Euclid: a^-1 mod m (m prime here, a not a multiple of m).
function modInverse(a, m) {
  let [oldR, r] = [mod(a, m), m];
  let [oldS, s] = [1n, 0n];
  while (r !== 0n) {
    const quotient = oldR / r;
    [oldR, r] = [r, oldR - quotient * r];
    [oldS, s] = [s, oldS - quotient * s];
  }
  if (oldR !== 1n) throw new Error('not invertible');
  return mod(oldS, m);
}

// ---------------------------------------------------------------------------------------------
// SHA-384 and HMAC-SHA384 (FIPS 180-4, RFC 2104) through crypto-js, on byte arrays.

function toWordArray(bytes) {
  const words = [];
  for (let i = 0; i < bytes.length; i++) {
    words[i >>> 2] |= bytes[i] << (24 - (i % 4) * 8);
  }
  return cryptoJs.lib.WordArray.create(words, bytes.length);
}

function fromWordArray(wordArray) {
  const out = new Uint8Array(wordArray.sigBytes);
  for (let i = 0; i < out.length; i++) {
    out[i] = (wordArray.words[i >>> 2] >>> (24 - (i % 4) * 8)) & 0xff;
  }
  return out;
}

function utf8(text) {
  return fromWordArray(cryptoJs.enc.Utf8.parse(text));
}

function sha384(bytes) {
  return fromWordArray(cryptoJs.SHA384(toWordArray(bytes)));
}

function hmacSha384(key, bytes) {
  return fromWordArray(cryptoJs.HmacSHA384(toWordArray(bytes), toWordArray(key)));
}

// ---------------------------------------------------------------------------------------------
// The private JWK (RFC 7518 §6.3.2 for RSA, §6.2.2 for EC).

function jwkInteger(jwk, name) {
  const value = jwk[name];
  if (typeof value !== 'string' || !value) {
    throw new Error(`the private JWK has no "${name}" member: it must be a private key`);
  }
  return bytesToBigInt(base64urlDecode(value, name));
}

function hasMembers(jwk, names) {
  return names.every((name) => typeof jwk[name] === 'string' && jwk[name] !== '');
}

// ---------------------------------------------------------------------------------------------
// RS384: RSASSA-PKCS1-v1_5 signature generation (RFC 8017 §8.2.1).

// DER of DigestInfo for SHA-384, without the 48-byte digest (RFC 8017 §9.2, note 1).
const SHA384_DIGEST_INFO_PREFIX = Uint8Array.from([
  0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02,
  0x05, 0x00, 0x04, 0x30,
]);

function signRS384(jwk, message) {
  const n = jwkInteger(jwk, 'n');
  const e = jwkInteger(jwk, 'e');
  const k = byteLength(n);
  // EMSA-PKCS1-v1_5 (RFC 8017 §9.2): EM = 0x00 || 0x01 || PS (0xff…) || 0x00 || T.
  const t = concatBytes(SHA384_DIGEST_INFO_PREFIX, sha384(message));
  if (k < t.length + 11) throw new Error('the RSA modulus is too short for RS384');
  const em = new Uint8Array(k).fill(0xff);
  em[0] = 0x00;
  em[1] = 0x01;
  em[k - t.length - 1] = 0x00;
  em.set(t, k - t.length);
  const m = bytesToBigInt(em); // OS2IP
  let s;
  if (hasMembers(jwk, ['p', 'q', 'dp', 'dq', 'qi'])) {
    // RSASP1 with the CRT quintuple (RFC 8017 §5.2.1 step 2.b, §5.1.2).
    const p = jwkInteger(jwk, 'p');
    const q = jwkInteger(jwk, 'q');
    const s1 = modPow(m, jwkInteger(jwk, 'dp'), p);
    const s2 = modPow(m, jwkInteger(jwk, 'dq'), q);
    const h = mod((s1 - s2) * jwkInteger(jwk, 'qi'), p);
    s = s2 + q * h;
  } else {
    s = modPow(m, jwkInteger(jwk, 'd'), n); // RSASP1, s = m^d mod n (§5.2.1 step 2.a)
  }
  // RSAVP1 (§5.2.2) on our own result: catches a JWK whose members do not belong together.
  if (modPow(s, e, n) !== m) {
    throw new Error('the private JWK is inconsistent: its signature does not verify with n, e');
  }
  return bigIntToBytes(s, k); // I2OSP
}

// ---------------------------------------------------------------------------------------------
// ES384: ECDSA over P-384 (FIPS 186-4 Appendix D.1.2.4: y^2 = x^3 - 3x + b over GF(p)).

const P384 = {
  p: (1n << 384n) - (1n << 128n) - (1n << 96n) + (1n << 32n) - 1n,
  b: BigInt('0xb3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875a' +
    'c656398d8a2ed19d2a85c8edd3ec2aef'),
  n: BigInt('0xffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf' +
    '581a0db248b0a77aecec196accc52973'),
  gx: BigInt('0xaa87ca22be8b05378eb1c71ef320ad746e1d3b628ba79b9859f741e082542a38' +
    '5502f25dbf55296c3a545e3872760ab7'),
  gy: BigInt('0x3617de4a96262c6f5d9e98bf9292dc29f8f41dbd289a147ce9da3113b5f0b8c0' +
    '0a60b1ce1d7e819d7a431d7c90ea0e5f'),
  size: 48, // bytes of p and of n
};

// Points in Jacobian coordinates (X, Y, Z) for (X/Z^2, Y/Z^3); Z = 0 is the point at infinity.
const INFINITY = [1n, 1n, 0n];

function pointDouble([x1, y1, z1]) {
  const p = P384.p;
  if (z1 === 0n || y1 === 0n) return INFINITY;
  // a = -3: alpha = 3 (X - Z^2)(X + Z^2).
  const delta = (z1 * z1) % p;
  const gamma = (y1 * y1) % p;
  const beta = (x1 * gamma) % p;
  const alpha = mod(3n * (x1 - delta) * (x1 + delta), p);
  const x3 = mod(alpha * alpha - 8n * beta, p);
  const z3 = mod((y1 + z1) * (y1 + z1) - gamma - delta, p);
  const y3 = mod(alpha * (4n * beta - x3) - 8n * gamma * gamma, p);
  return [x3, y3, z3];
}

function pointAdd(first, second) {
  const p = P384.p;
  const [x1, y1, z1] = first;
  const [x2, y2, z2] = second;
  if (z1 === 0n) return second;
  if (z2 === 0n) return first;
  const z1z1 = (z1 * z1) % p;
  const z2z2 = (z2 * z2) % p;
  const u1 = (x1 * z2z2) % p;
  const u2 = (x2 * z1z1) % p;
  const s1 = (y1 * z2 * z2z2) % p;
  const s2 = (y2 * z1 * z1z1) % p;
  const h = mod(u2 - u1, p);
  const r = mod(s2 - s1, p);
  if (h === 0n) return r === 0n ? pointDouble(first) : INFINITY;
  const hh = (h * h) % p;
  const hhh = (h * hh) % p;
  const v = (u1 * hh) % p;
  const x3 = mod(r * r - hhh - 2n * v, p);
  const y3 = mod(r * (v - x3) - s1 * hhh, p);
  const z3 = (z1 * z2 * h) % p;
  return [x3, y3, z3];
}

// k * G by double-and-add over the bits of k, most significant first.
function multiplyBase(k) {
  const g = [P384.gx, P384.gy, 1n];
  let result = INFINITY;
  for (let i = BigInt(k.toString(2).length) - 1n; i >= 0n; i--) {
    result = pointDouble(result);
    if ((k >> i) & 1n) result = pointAdd(result, g);
  }
  return result;
}

function toAffine([x, y, z]) {
  if (z === 0n) throw new Error('point at infinity');
  const p = P384.p;
  const zInv = modInverse(z, p);
  const zInv2 = (zInv * zInv) % p;
  return [(x * zInv2) % p, (y * zInv2 * zInv) % p];
}

// RFC 6979 §3.2: candidate nonces k from HMAC_DRBG(HMAC-SHA384) seeded with the private key x
// and the digest h1. For P-384 with SHA-384, qlen = hlen = 384 bits, so bits2int is the plain
// big-endian integer and one HMAC output (48 bytes) fills T. After each candidate (rejected by
// step h.3, or by the caller because r or s came out zero, §3.4) the state moves on as step h.3
// prescribes.
function* rfc6979Nonces(x, h1) {
  const q = P384.n;
  const rlen = P384.size;
  const xOctets = bigIntToBytes(x, rlen); // int2octets(x)
  const hOctets = bigIntToBytes(mod(bytesToBigInt(h1), q), rlen); // bits2octets(h1)
  let v = new Uint8Array(48).fill(0x01); // step b
  let k = new Uint8Array(48).fill(0x00); // step c
  k = hmacSha384(k, concatBytes(v, [0x00], xOctets, hOctets)); // step d
  v = hmacSha384(k, v); // step e
  k = hmacSha384(k, concatBytes(v, [0x01], xOctets, hOctets)); // step f
  v = hmacSha384(k, v); // step g
  for (;;) {
    v = hmacSha384(k, v); // step h.2: T = V (tlen = qlen after one block)
    const candidate = bytesToBigInt(v); // bits2int(T)
    if (candidate >= 1n && candidate < q) yield candidate;
    k = hmacSha384(k, concatBytes(v, [0x00])); // step h.3
    v = hmacSha384(k, v);
  }
}

function signES384(jwk, message) {
  if (jwk.crv !== 'P-384') throw new Error('ES384 needs an EC key on the curve P-384');
  const n = P384.n;
  const d = jwkInteger(jwk, 'd');
  if (d < 1n || d >= n) throw new Error('the private JWK member "d" is out of range');
  // The public point must be d * G, or the server will not verify what we sign.
  const [qx, qy] = toAffine(multiplyBase(d));
  if (qx !== jwkInteger(jwk, 'x') || qy !== jwkInteger(jwk, 'y')) {
    throw new Error('the private JWK is inconsistent: d * G is not the point (x, y)');
  }
  const digest = sha384(message);
  const e = bytesToBigInt(digest); // SEC 1 §4.1.3 step 5 (hash length = bit length of n)
  for (const k of rfc6979Nonces(d, digest)) {
    const r = mod(toAffine(multiplyBase(k))[0], n); // SEC 1 §4.1.3 steps 1-3
    if (r === 0n) continue;
    const s = mod(modInverse(k, n) * (e + r * d), n); // step 6
    if (s === 0n) continue;
    // JWS ECDSA signature: I2OSP(r, 48) || I2OSP(s, 48) (RFC 7518 §3.4).
    return concatBytes(bigIntToBytes(r, P384.size), bigIntToBytes(s, P384.size));
  }
  throw new Error('unreachable');
}

// ---------------------------------------------------------------------------------------------
// The client assertion (RFC 7523 §3; SMART Backend Services, client-confidential-asymmetric).

function readPrivateJwk() {
  const raw = pm.variables.get('privateKey');
  if (raw === undefined || raw === null || String(raw).trim() === '') {
    throw new Error(MISSING_KEY_MESSAGE);
  }
  let jwk;
  try {
    jwk = typeof raw === 'string' ? JSON.parse(raw) : raw;
  } catch (error) {
    throw new Error('"privateKey" is not JSON: paste the private JWK (a JSON object) into it');
  }
  if (jwk && Array.isArray(jwk.keys) && jwk.keys.length === 1) jwk = jwk.keys[0]; // a JWK Set
  if (!jwk || typeof jwk !== 'object' || typeof jwk.d !== 'string') {
    throw new Error('"privateKey" must be a private JWK: a JSON object with the member "d"');
  }
  return jwk;
}

function required(name) {
  const value = pm.variables.replaceIn(String(pm.variables.get(name) || ''));
  if (!value) throw new Error(`the variable "${name}" is empty: use the fhirgate environment`);
  return value;
}

function clientAssertion() {
  const jwk = readPrivateJwk();
  const alg = pm.variables.get('alg') || jwk.alg || (jwk.kty === 'EC' ? 'ES384' : 'RS384');
  const wanted = { RS384: 'RSA', ES384: 'EC' }[alg];
  if (!wanted) throw new Error(`alg must be RS384 or ES384, not "${alg}"`);
  if (jwk.kty !== wanted) throw new Error(`${alg} needs a private JWK with kty "${wanted}"`);
  const clientId = required('clientId');
  const tokenUrl = required('tokenUrl');
  const kid = pm.variables.replaceIn(String(pm.variables.get('kid') || jwk.kid || ''));
  if (!kid) throw new Error('the variable "kid" is empty: fhirgate requires a kid header');

  const now = Math.floor(Date.now() / 1000);
  const header = { alg: alg, typ: 'JWT', kid: kid };
  const claims = {
    iss: clientId,
    sub: clientId,
    aud: tokenUrl,
    iat: now,
    exp: now + ASSERTION_LIFETIME,
    jti: pm.variables.replaceIn('{{$guid}}'), // a fresh random UUID for each request
  };
  const signingInput =
    base64urlEncode(utf8(JSON.stringify(header))) + '.' +
    base64urlEncode(utf8(JSON.stringify(claims)));
  const message = utf8(signingInput);
  const signature = alg === 'RS384' ? signRS384(jwk, message) : signES384(jwk, message);
  return signingInput + '.' + base64urlEncode(signature);
}

pm.variables.set('clientAssertion', clientAssertion());
