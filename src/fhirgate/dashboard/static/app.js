// fhirgate dashboard: the few things a page cannot do without a script. Written for this
// project; no library. Every form still works without it except key generation, which needs
// the browser's WebCrypto (W3C Web Cryptography API).
"use strict";

const csrfToken = () => document.querySelector('meta[name="csrf-token"]')?.content ?? "";

// POST a form body from a script, with the session's CSRF token; the JSON answer.
async function postForm(url, fields) {
  const response = await fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { "X-CSRF-Token": csrfToken(), Accept: "application/json" },
    body: new URLSearchParams(fields),
  });
  let body = {};
  try {
    body = await response.json();
  } catch {
    body = { error: `the server answered ${response.status}` };
  }
  if (!response.ok) throw new Error(body.error || `the server answered ${response.status}`);
  return body;
}

// Copy buttons: <button class="copy" data-copy="element-id">.
function setUpCopyButtons() {
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const text = document.getElementById(button.dataset.copy)?.textContent ?? "";
      const label = button.textContent;
      try {
        await navigator.clipboard.writeText(text.trim());
        button.textContent = "Copied";
      } catch {
        const range = document.createRange(); // no clipboard access: select it for Ctrl+C
        range.selectNodeContents(document.getElementById(button.dataset.copy));
        getSelection().removeAllRanges();
        getSelection().addRange(range);
        button.textContent = "Selected: press Ctrl+C";
      }
      setTimeout(() => { button.textContent = label; }, 2000);
    });
  }
}

// base64url without padding (RFC 7515 §2).
function base64url(bytes) {
  let binary = "";
  for (const byte of new Uint8Array(bytes)) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function pem(label, der) {
  let binary = "";
  for (const byte of new Uint8Array(der)) binary += String.fromCharCode(byte);
  const lines = btoa(binary).match(/.{1,64}/g).join("\n");
  return `-----BEGIN ${label}-----\n${lines}\n-----END ${label}-----\n`;
}

// RFC 7638 §3: the SHA-256 thumbprint over the required members, in lexicographic order.
async function thumbprint(jwk) {
  const members = jwk.kty === "RSA" ? { e: jwk.e, kty: jwk.kty, n: jwk.n }
    : { crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y };
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(JSON.stringify(members)));
  return base64url(digest);
}

const ALGORITHMS = {
  RS384: { name: "RSASSA-PKCS1-v1_5", modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: "SHA-384" },
  ES384: { name: "ECDSA", namedCurve: "P-384" },
};

function offerDownload(link, filename, text, type) {
  link.href = URL.createObjectURL(new Blob([text], { type }));
  link.download = filename;
}

// Generate a key pair, register its public half, offer the private half for download once.
function setUpKeyGeneration() {
  const generator = document.getElementById("generator");
  const button = document.getElementById("generate");
  if (!generator || !button) return;
  const problem = document.getElementById("generate-error");
  button.addEventListener("click", async () => {
    button.disabled = true;
    problem.classList.add("hidden");
    try {
      const alg = document.getElementById("generate-alg").value;
      const pair = await crypto.subtle.generateKey(ALGORITHMS[alg], true, ["sign", "verify"]);
      const privateJwk = await crypto.subtle.exportKey("jwk", pair.privateKey);
      const publicJwk = await crypto.subtle.exportKey("jwk", pair.publicKey);
      const kid = await thumbprint(publicJwk);
      const registered = { kty: publicJwk.kty, kid, alg, use: "sig" };
      for (const member of ["n", "e", "crv", "x", "y"]) {
        if (publicJwk[member] !== undefined) registered[member] = publicJwk[member];
      }
      await postForm(generator.dataset.keysUrl, { key: JSON.stringify(registered), kid });
      const fullPrivate = { ...privateJwk, kid, alg, use: "sig" };
      delete fullPrivate.key_ops;
      delete fullPrivate.ext;
      const der = await crypto.subtle.exportKey("pkcs8", pair.privateKey);
      offerDownload(document.getElementById("download-pem"), `${kid}.private.pem`, pem("PRIVATE KEY", der), "application/x-pem-file");
      offerDownload(document.getElementById("download-jwk"), `${kid}.private.jwk.json`, JSON.stringify(fullPrivate, null, 2), "application/json");
      const environment = await (await fetch(`${generator.dataset.environmentUrl}?kid=${encodeURIComponent(kid)}`, { credentials: "same-origin" })).json();
      for (const variable of environment.values) {
        if (variable.key === "privateKey") variable.value = JSON.stringify(fullPrivate);
      }
      offerDownload(document.getElementById("download-postman"), "fhirgate.postman_environment.json", JSON.stringify(environment, null, 2), "application/json");
      document.getElementById("generated-kid").textContent = kid;
      const panel = document.getElementById("generated");
      panel.classList.remove("hidden");
      panel.focus();
    } catch (error) {
      problem.textContent = `The key pair was not registered: ${error.message}`;
      problem.classList.remove("hidden");
      button.disabled = false;
    }
  });
}

// "Test" next to the JWKS URL: the server fetches it now and lists the kids it found.
function setUpJwksTest() {
  const form = document.getElementById("jwks-form");
  const button = document.getElementById("jwks-test");
  if (!form || !button) return;
  const result = document.getElementById("jwks-result");
  button.addEventListener("click", async () => {
    button.disabled = true;
    result.className = "";
    result.textContent = "Fetching…";
    try {
      const found = await postForm(form.dataset.testUrl, { jwks_url: document.getElementById("jwks-url").value });
      result.className = "notice";
      result.textContent = found.kids.length
        ? `Found ${found.kids.length} key(s): ${found.kids.join(", ")}`
        : "The JWKS URL answered, with no keys.";
    } catch (error) {
      result.className = "error";
      result.textContent = `Test failed: ${error.message}`;
    } finally {
      button.disabled = false;
    }
  });
}

// A page answering a POST that showed a secret once takes the key's own URL, so reloading it
// shows the Settings page instead of sending the form again (and creating another key).
function settleUrl() {
  const target = document.querySelector("[data-replace-url]")?.dataset.replaceUrl;
  if (target) history.replaceState(null, "", target);
}

document.addEventListener("DOMContentLoaded", () => {
  settleUrl();
  setUpCopyButtons();
  setUpKeyGeneration();
  setUpJwksTest();
});
