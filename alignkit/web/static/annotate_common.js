// The annotate area's shared client code: the token (kept for this tab's session only),
// authorised JSON requests with retries, and the sign-in form. Model text is only ever
// put into the page with textContent.
"use strict";

const AK = (() => {
  const TOKEN_KEY = "alignkit.annotate.token";

  function token() { return sessionStorage.getItem(TOKEN_KEY); }
  function setToken(value) { sessionStorage.setItem(TOKEN_KEY, value); }
  function clearToken() { sessionStorage.removeItem(TOKEN_KEY); }

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  // One request; network failures and 5xx are retried with the same body (a label's
  // client_id makes that safe), 4xx are the caller's to show.
  async function api(path, { method = "GET", body = null, retries = 3, raw = false } = {}) {
    const headers = { Authorization: `Bearer ${token() || ""}` };
    if (body !== null) headers["Content-Type"] = "application/json";
    let lastError = null;
    for (let attempt = 0; attempt <= retries; attempt++) {
      if (attempt > 0) await new Promise((r) => setTimeout(r, 300 * 2 ** (attempt - 1)));
      let response;
      try {
        response = await fetch(path, {
          method, headers, body: body === null ? null : JSON.stringify(body),
        });
      } catch (error) {
        lastError = new ApiError(0, "the server cannot be reached; retrying");
        continue;
      }
      if (response.status >= 500) {
        lastError = new ApiError(response.status, "the server had a problem; retrying");
        continue;
      }
      if (!response.ok) {
        let message = `${response.status}`;
        try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
        throw new ApiError(response.status, message);
      }
      return raw ? response : response.json();
    }
    throw lastError;
  }

  function show(element, visible) { element.hidden = !visible; }

  // Ask for the token until /api/annotate/me accepts it; then call onReady(me).
  async function signIn(onReady) {
    const login = document.getElementById("login");
    const work = document.getElementById("work");
    const form = document.getElementById("login-form");
    const input = document.getElementById("token");
    const error = document.getElementById("login-error");

    async function tryToken() {
      try {
        const me = await api("/api/annotate/me", { retries: 1 });
        show(login, false);
        show(work, true);
        document.getElementById("who").textContent = me.name;
        document.getElementById("stats-link").hidden = !me.admin;
        onReady(me);
        return true;
      } catch (e) {
        if (e.status === 401) clearToken();
        error.textContent = e.status === 401 ? "That token is not valid." : e.message;
        return false;
      }
    }

    document.getElementById("logout").addEventListener("click", () => {
      clearToken();
      window.location.reload();
    });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const value = input.value.trim();
      if (!value) { error.textContent = "Paste your token first."; return; }
      setToken(value);
      input.value = "";
      await tryToken();
    });
    if (token() && (await tryToken())) return;
    show(work, false);
    show(login, true);
    input.focus();
  }

  function setProgress(progress) {
    document.getElementById("done").textContent = progress.done;
    document.getElementById("remaining").textContent = progress.remaining;
    const total = progress.done + progress.remaining;
    const share = total ? (100 * progress.done) / total : 0;
    document.getElementById("bar-fill").style.width = `${share.toFixed(1)}%`;
  }

  function newClientId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID().replace(/-/g, "");
    return Array.from(crypto.getRandomValues(new Uint8Array(16)),
      (b) => b.toString(16).padStart(2, "0")).join("");
  }

  return { api, ApiError, signIn, setProgress, newClientId, token };
})();
