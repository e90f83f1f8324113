// The router's dashboard: polls the admin API, keeps a rolling buffer, draws charts on <canvas>.
// Rates come from differences of successive cumulative readings of GET /admin/analysis.
"use strict";
(() => {
  const POLL_MS = 2000;
  const WINDOW_MS = 5 * 60 * 1000;
  const MIN_SPAN_MS = 30 * 1000; // the time axis grows with the buffer, up to WINDOW_MS
  const TICK_STEPS_S = [5, 10, 15, 30, 60];
  const TOKEN_KEY = "router-admin-token";
  const COLORS = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#0891b2", "#ca8a04"];
  const SAMPLES_SHOWN = 10;
  const ACTIVE = ["running", "paused", "awaiting_promotion"];
  const DRIFT_TONES = { stable: "good", moderate: "warn", major: "bad" };
  const TONES = { pass: "good", promoted: "good", running: "good", wait: "warn", paused: "warn",
    awaiting_promotion: "warn", fail: "bad", rolled_back: "bad", aborted: "bad" };
  const pct = (x) => (x * 100).toFixed(x < 0.1 && x > 0 ? 2 : 1) + " %";
  const ms = (x) => x.toFixed(x < 10 ? 2 : x < 100 ? 1 : 0) + " ms";
  const METRICS = {
    rate: { format: (x) => x.toFixed(x < 10 ? 2 : x < 100 ? 1 : 0) + "/s", floor: 1 },
    error: { format: pct, floor: 0.01 },
    agreement: { format: pct, range: [0.9, 1] },
    p50: { format: ms, floor: 1 },
    p95: { format: ms, floor: 1 },
    p99: { format: ms, floor: 1 },
  };

  const $ = (selector) => document.querySelector(selector);
  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  let timer = null;
  let loop = 0; // the current polling loop; a superseded one drops its answers and stops
  let previous = null; // last analysis reading: {t, versions}
  let points = []; // rolling buffer: {t, values: {version: {rate, error, agreement, p50, p95, p99}}}
  let versions = [];
  let last = {};

  // Build an element with text children only: nothing from the API is ever parsed as HTML.
  function h(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === "swatch") node.style.setProperty("--swatch", value);
      else if (key === "style") Object.assign(node.style, value);
      else if (key.startsWith("data-") || key === "title" || key === "colspan") node.setAttribute(key, value);
      else node[key] = value;
    }
    node.append(...children.filter((c) => c !== null && c !== undefined));
    return node;
  }
  const colorOf = (version) => COLORS[Math.max(0, versions.indexOf(version)) % COLORS.length];
  const fmt = (value, format) => (value === null || value === undefined ? "—" : format(value));
  const clock = (seconds) => new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(method, path, body) {
    const headers = { Authorization: "Bearer " + token, Accept: "application/json" };
    if (method !== "GET") headers["X-Actor"] = "dashboard";
    if (body) headers["Content-Type"] = "application/json";
    let resp;
    try {
      resp = await fetch(path, { method, headers, cache: "no-store", body: body && JSON.stringify(body) });
    } catch (err) {
      throw new ApiError(0, "the router did not answer (" + err.message + ")");
    }
    const doc = await resp.json().catch(() => null);
    if (!resp.ok) throw new ApiError(resp.status, (doc && doc.error && doc.error.message) || resp.statusText);
    return doc;
  }

  // -- connection and token -----------------------------------------------------------------
  function notice(text, tone) {
    const node = $("#notice");
    node.hidden = !text;
    node.textContent = text || "";
    node.dataset.tone = tone || "";
  }

  function connection(status, text) {
    const pill = $("#connection");
    pill.dataset.status = status;
    pill.textContent = text;
    $("#main").classList.toggle("locked", status !== "live");
    $("#forget").hidden = !token;
  }

  function stop(status, text, message, tone) {
    clearTimeout(timer);
    loop += 1;
    connection(status, text);
    notice(message, tone);
    updateButtons(null);
  }

  function needToken() {
    stop("idle", "not connected", "An admin token is needed to show live data and to act: enter the " +
      "router's ROUTER_ADMIN_TOKEN above. It is kept in this browser tab only and sent only to this router.");
  }

  function connect(newToken) {
    token = newToken;
    sessionStorage.setItem(TOKEN_KEY, token);
    connection("idle", "connecting…");
    notice("");
    restart();
  }

  function restart() {
    clearTimeout(timer);
    loop += 1;
    poll(loop);
  }

  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const given = $("#token").value.trim();
    $("#token").value = "";
    if (given) connect(given);
    else needToken();
  });
  $("#forget").addEventListener("click", () => {
    token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    needToken();
  });

  // -- polling ----------------------------------------------------------------------------------
  async function poll(id) {
    try {
      const [state, analysis, rollout, drift, disagreements] = await Promise.all([
        api("GET", "admin/state"), api("GET", "admin/analysis"), api("GET", "admin/rollout"),
        // drift is a panel of its own: a router without it leaves the rest of the page working
        api("GET", "admin/drift").catch((err) => ({ error: err.message })),
        api("GET", "admin/disagreements?limit=" + SAMPLES_SHOWN)]);
      if (id !== loop) return;
      ingest(analysis, Date.now());
      render(state, analysis, rollout.rollout);
      renderDrift(state, drift);
      renderDisagreements(disagreements);
      connection("live", "live");
      notice("");
    } catch (err) {
      if (id !== loop) return;
      if (!(err instanceof ApiError)) {
        console.error(err);
        err = new ApiError(0, "dashboard error: " + err.message);
      }
      if (err.status === 401) {
        sessionStorage.removeItem(TOKEN_KEY);
        token = "";
        stop("error", "unauthorized", "401 Unauthorized: " + err.message, "bad");
        return;
      }
      if (err.status === 503 && /admin API is disabled/.test(err.message)) {
        stop("error", "admin API off", err.message, "bad");
        return;
      }
      connection("error", "retrying");
      notice(err.message + " — retrying", "bad");
    }
    timer = setTimeout(() => poll(id), POLL_MS);
  }

  function ingest(analysis, t) {
    const values = {};
    const dt = previous ? (t - previous.t) / 1000 : 0;
    for (const [version, now] of Object.entries(analysis.versions)) {
      const before = previous && previous.versions[version];
      // A counter that went down means a new analysis window (or a restart): no rate this time.
      const ok = before && dt > 0 && now.requests >= before.requests && now.errors >= before.errors;
      const requests = ok ? now.requests - before.requests : 0;
      const agree = ok ? now.shadow.agree - before.shadow.agree : 0;
      const compared = ok ? agree + now.shadow.disagree - before.shadow.disagree : 0;
      values[version] = {
        rate: ok ? requests / dt : null,
        error: ok && requests > 0 ? (now.errors - before.errors) / requests : null,
        agreement: compared > 0 && agree >= 0 ? agree / compared : null,
        p50: now.latency_ms.p50, p95: now.latency_ms.p95, p99: now.latency_ms.p99,
      };
    }
    previous = { t, versions: analysis.versions };
    points.push({ t, values });
    points = points.filter((p) => p.t >= t - WINDOW_MS);
  }

  // -- rendering --------------------------------------------------------------------------------
  function render(state, analysis, rollout) {
    versions = Object.keys(state.upstreams);
    last = { state, analysis, rollout };
    renderRouting(state, analysis);
    renderVersions(state, analysis);
    renderQuality(analysis.quality);
    renderRollout(rollout, analysis.verdict);
    updateButtons(state, rollout);
    drawCharts();
  }

  // Roles name slots; each slot serves a version, which the metrics are keyed by.
  const versionOf = (state, slot) => (state.slots && state.slots[slot] && state.slots[slot].version) || slot;
  const slotLabel = (state, slot) => {
    if (!slot) return "none";
    const version = versionOf(state, slot);
    return version === slot ? slot : `${slot} (${version})`;
  };

  function renderRouting(state, analysis) {
    $("#strategy").textContent = state.strategy;
    $("#stable").textContent = slotLabel(state, state.stable);
    $("#candidate").textContent = slotLabel(state, state.candidate);
    $("#previous-stable").textContent = state.previous_stable || "—";
    $("#store").textContent = state.store.reachable ? "reachable" : "unreachable";
    $("#store").title = state.store.error || "";
    $("#shadow").textContent = state.shadow_percent ? state.shadow_percent + " % to " + slotLabel(state, state.candidate) : "off";
    const candidate = state.candidate && analysis.versions[versionOf(state, state.candidate)];
    const agreement = candidate ? candidate.shadow.agreement : null;
    $("#agreement").textContent = fmt(agreement, pct);
    const version = $("#config-version");
    version.textContent = state.config_version;
    version.dataset.configVersion = state.config_version;
    const shares = Object.entries(state.weights).filter(([, weight]) => weight > 0);
    $("#split").replaceChildren(...shares.map(([v, weight]) => h("span",
      { style: { background: colorOf(v), width: weight + "%" }, title: `${slotLabel(state, v)} ${weight} %` },
      `${slotLabel(state, v)} ${weight} %`)));
    $("#split-legend").replaceChildren(...Object.entries(state.weights).map(([v, weight]) =>
      h("li", { swatch: colorOf(v) }, `${slotLabel(state, v)} ${weight} % of answers`)));
  }

  function renderVersions(state, analysis) {
    $("#window").textContent = "Totals " + analysis.window;
    $("#legend").replaceChildren(...versions.map((v) => h("li", { swatch: colorOf(v) }, v)));
    $("#versions").replaceChildren(...versions.map((v) => {
      const s = analysis.versions[versionOf(state, v)];
      const role = v === state.stable ? "stable" : v === state.candidate ? "candidate" : "idle";
      const cell = (text) => h("td", { className: "num" }, text);
      return h("tr", { "data-version": v },
        h("td", { className: "version", swatch: colorOf(v) }, slotLabel(state, v)), h("td", {}, role),
        cell(state.weights[v] + " %"),
        cell(s ? String(Math.round(s.requests)) : "0"),
        cell(s && s.requests ? pct(s.error_rate) : "—"),
        cell(fmt(s && s.latency_ms.p50, ms)), cell(fmt(s && s.latency_ms.p95, ms)),
        cell(fmt(s && s.latency_ms.p99, ms)),
        cell(s ? String(Math.round(s.shadow.requests)) : "0"),
        cell(fmt(s && s.shadow.agreement, pct)));
    }));
  }

  function renderDrift(state, drift) {
    const box = $("#drift-slots");
    if (drift.error) {
      box.replaceChildren(h("p", { className: "muted" }, "Drift not available: " + drift.error));
      return;
    }
    box.replaceChildren(...Object.entries(drift.slots).map(([slot, d]) => {
      const role = d.role ? ` · ${d.role}` : "";
      const title = h("h3", { swatch: colorOf(slot) }, slotLabel(state, slot) + role);
      if (!d.available) {
        return h("div", { className: "drift-slot", "data-slot": slot }, title,
          h("p", { className: "muted" }, d.problem || d.reason || "no drift reported"));
      }
      const rows = h("p", { className: "muted" }, `${d.window_rows} rows in the window` +
        (d.window_rows < d.min_rows ? ` (PSI from ${d.min_rows})` : ""));
      const items = d.columns.map((c) => h("li", { "data-column": c.name },
        h("span", { className: "badge", "data-tone": DRIFT_TONES[c.reading] || "" },
          c.psi === null ? "—" : c.psi.toFixed(3)), " ", c.name));
      return h("div", { className: "drift-slot", "data-slot": slot }, title, rows,
        h("ol", { className: "drift-columns" }, ...items));
    }));
  }

  function renderQuality(quality) {
    $("#quality-off").hidden = !!quality;
    const q = (quality && quality.versions) || {};
    const num = (x) => (x == null ? "—" : String(x));
    $("#quality").replaceChildren(...Object.entries(q).map(([v, s]) => {
      const cell = (text) => h("td", { className: "num" }, text);
      const ci = s.accuracy_ci95 ? ` [${s.accuracy_ci95.map((x) => pct(x)).join(", ")}]` : "";
      return h("tr", { "data-version": v }, h("td", { className: "version" }, v), cell(String(s.rows)),
        cell(s.accuracy == null ? "—" : pct(s.accuracy) + ci), cell(num(s.log_loss)),
        cell(num(s.mae)), cell(num(s.rmse)));
    }));
    $("#paired").replaceChildren(...((quality && quality.paired) || []).map((p) => h("li", {},
      p.mcnemar
        ? `${p.stable} vs ${p.candidate} on the same ${p.rows} rows: accuracy ${pct(p.stable_accuracy)} vs ` +
          `${pct(p.candidate_accuracy)}; only ${p.stable} right ${p.stable_right_candidate_wrong}, only ` +
          `${p.candidate} right ${p.stable_wrong_candidate_right}; McNemar p = ${p.mcnemar.p_value}`
        : `${p.stable} vs ${p.candidate} on the same ${p.rows} rows: MAE ${num(p.stable_mae)} vs ${num(p.candidate_mae)}`)));
  }

  // The confusion matrix (rows: stable's class, columns: the candidate's), the distribution of
  // per-row differences, and the latest disagreeing rows, from GET /admin/disagreements.
  function renderDisagreements(doc) {
    const label = (c) => (typeof c === "string" ? c : JSON.stringify(c));
    $("#disagreement-pair").textContent = doc.stable && doc.candidate
      ? `${doc.stable} (stable) vs ${doc.candidate} (candidate)` : "";
    const summary = doc.rows
      ? `${doc.rows} rows compared, ${doc.disagreeing_rows} disagree (agreement ${pct(doc.agreement)}).`
      : "No compared rows yet: pairs come from " + doc.pairs_from + ".";
    $("#disagreement-summary").textContent = summary + (doc.note ? " " + doc.note : "");
    const matrix = doc.confusion_matrix;
    const classes = matrix ? matrix.classes.map(label) : [];
    $("#confusion").replaceChildren(...(classes.length ? [
      h("thead", {}, h("tr", {}, h("th", {}, "stable \\ candidate"),
        ...classes.map((c) => h("th", { className: "num" }, c)))),
      h("tbody", {}, ...matrix.counts.map((line, i) => h("tr", { "data-class": classes[i] },
        h("th", {}, classes[i]),
        ...line.map((n, j) => h("td", { className: i === j ? "num agree" : n ? "num disagree" : "num",
          "data-candidate": classes[j] }, String(n)))))),
    ] : doc.confusion_matrix_note ? [h("caption", { className: "muted" }, doc.confusion_matrix_note)] : []));
    $("#difference-kind").textContent = doc.differences.kind + " difference per row";
    const buckets = doc.differences.buckets.filter((b) => b.count);
    const top = Math.max(1, ...buckets.map((b) => b.count));
    $("#differences").replaceChildren(...buckets.map((b) => h("tr", {},
      h("td", {}, b.le === null ? "above" : "≤ " + b.le), h("td", { className: "num" }, String(b.count)),
      h("td", {}, h("span", { className: "bar", style: { width: Math.max(2, 120 * b.count / top) + "px" } })))));
    const rows = doc.samples.map((s) => h("tr", { "data-request-id": s.request_id || "" },
      h("td", {}, String(s.time || "").slice(11, 19)), h("td", {}, s.request_id || "—"),
      h("td", { className: "num" }, String(s.row)),
      h("td", {}, label(s.stable_prediction)), h("td", {}, label(s.candidate_prediction)),
      h("td", { className: "num" }, fmt(s.difference, (x) => x.toPrecision(3))),
      h("td", { className: "input", title: JSON.stringify(s.input) }, JSON.stringify(s.input).slice(0, 80))));
    $("#disagreement-samples").replaceChildren(...(rows.length ? rows
      : [h("tr", {}, h("td", { colspan: "7", className: "muted" }, "No disagreeing rows recorded."))]));
  }

  function comparator(name) {
    return name === "sample_size" || name === "labels" || name.startsWith("min") ||
      name === "agreement" ? "≥" : "≤";
  }

  function checkItem(check) {
    const bounds = check.interval ? ` [${check.interval.map((x) => x ?? "?").join(", ")}]` : "";
    const text = `${check.name}: ${check.value ?? "—"}${bounds} (${comparator(check.name)} ${check.threshold ?? "—"})`;
    return h("li", { title: check.detail || "" },
      h("span", { className: "badge", "data-tone": TONES[check.decision] || "" }, check.decision),
      text, check.detail ? h("small", { className: "muted" }, " · " + check.detail) : null);
  }

  const samples = (entry) => Object.entries(entry.samples || {}).map(([k, v]) => `${k} ${v}`).join(" · ") +
    (entry.needed_requests != null ? ` · about ${entry.needed_requests} more requests` +
      (entry.needed_minutes != null ? ` (~${entry.needed_minutes} min)` : "") + " to a decision" : "") +
    (entry.needed_labels != null ? ` · about ${entry.needed_labels} more labelled rows (POST /feedback)` : "") +
    (entry.input_drift && entry.input_drift.shifting ? ` · inputs shifting: ${entry.input_drift.note}` : "");

  function renderRollout(rollout, verdict) {
    const badge = $("#rollout-status");
    badge.textContent = rollout ? rollout.status.replace("_", " ") : "";
    badge.dataset.tone = rollout ? TONES[rollout.status] || "" : "";
    const verdictBadge = $("#verdict");
    verdictBadge.textContent = verdict ? verdict.decision : "";
    verdictBadge.dataset.tone = verdict ? TONES[verdict.decision] || "" : "";
    $("#verdict-checks").replaceChildren(...(verdict ? [
      ...verdict.checks.map(checkItem), h("li", { className: "muted" }, "samples: " + samples(verdict))]
      : [h("li", { className: "muted" }, "No candidate to compare.")]));
    if (!rollout) {
      $("#rollout-summary").replaceChildren("No rollout yet. Start one with ", h("code", {}, "rollout start"),
        " or ", h("code", {}, "POST /admin/rollout"), ".");
      $("#steps").replaceChildren();
      $("#plan").replaceChildren();
      $("#decisions").replaceChildren(h("tr", {}, h("td", { colspan: 5, className: "muted" }, "No decisions yet.")));
      return;
    }
    const plan = rollout.plan;
    const steps = rollout.steps || [];
    const inSteps = rollout.phase === "canary" || rollout.phase === "done";
    $("#rollout-summary").textContent = [
      rollout.release && rollout.release.version
        ? `${plan.strategy} of ${rollout.release.version} in slot ${rollout.release.slot}`
        : `${plan.strategy} of ${rollout.candidate}`, `phase ${rollout.phase}`,
      steps.length ? `step ${Math.min(rollout.step + 1, steps.length)} of ${steps.length}` : null,
      rollout.current_weight !== null ? `weight ${rollout.current_weight} %` : null,
      `failed analyses ${rollout.failed_analyses} of ${plan.max_failed_analyses}`,
      `started ${clock(rollout.started_at)}`,
    ].filter(Boolean).join(" · ");
    $("#rollout-summary").dataset.step = rollout.step;
    $("#steps").replaceChildren(...steps.map((weight, i) => {
      const done = rollout.status === "promoted" || (inSteps && i < rollout.step);
      const current = inSteps && i === rollout.step && ACTIVE.includes(rollout.status);
      return h("li", { className: current ? "current" : done ? "done" : "" }, weight + " %");
    }));
    const thresholds = Object.entries(plan.thresholds || {}).map(([k, v]) => [k.replaceAll("_", " "), v]);
    $("#plan").replaceChildren(...[["interval", plan.interval_s + " s"], ["min requests", plan.min_requests],
      ["manual promotion", plan.manual_promotion ? "yes" : "no"], ...thresholds]
      .map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, String(v)))));
    const decisions = (rollout.decisions || []).slice(-20).reverse();
    $("#decisions").replaceChildren(...(decisions.length ? decisions.map((d) => h("tr", {},
      h("td", {}, clock(d.time)), h("td", {}, d.phase === "canary" ? `canary, step ${d.step + 1}` : d.phase), h("td", {}, d.action),
      h("td", {}, h("span", { className: "badge", "data-tone": TONES[d.decision] || "" }, d.decision || "—")),
      h("td", {}, h("ul", { className: "checks" }, ...(d.checks || []).map(checkItem),
        h("li", { className: "muted" }, "samples: " + samples(d))))))
      : [h("tr", {}, h("td", { colspan: 5, className: "muted" }, "No decisions yet."))]));
  }

  // -- actions ----------------------------------------------------------------------------------
  function updateButtons(state, rollout) {
    const status = rollout ? rollout.status : null;
    const enabled = {
      promote: Boolean(state && state.candidate),
      rollback: Boolean(state),
      "rollout/pause": status === "running",
      "rollout/resume": status === "paused" || status === "awaiting_promotion",
    };
    for (const button of document.querySelectorAll("[data-action]")) {
      button.disabled = !enabled[button.dataset.action];
    }
  }

  const CONFIRM = {
    promote: (s) => `Promote ${s.candidate} to stable? It will answer all traffic.`,
    rollback: (s) => `Roll back? All traffic goes to ${s.stable}; a running rollout is aborted.`,
  };

  for (const button of document.querySelectorAll("[data-action]")) {
    button.addEventListener("click", async () => {
      const action = button.dataset.action;
      const ask = CONFIRM[action];
      if (ask && last.state && !window.confirm(ask(last.state))) return;
      const result = $("#action-result");
      const reason = $("#reason").value.trim();
      button.disabled = true;
      try {
        const doc = await api("POST", "admin/" + action, reason ? { reason } : null);
        result.dataset.tone = "good";
        result.textContent = `${button.textContent}: done, config version ${doc.config_version}`;
        $("#reason").value = "";
      } catch (err) {
        result.dataset.tone = "bad";
        result.textContent = `${button.textContent} failed (${err.status || "network"}): ${err.message}`;
      }
      if (token) restart();
    });
  }

  // -- charts -----------------------------------------------------------------------------------
  function niceMax(value) {
    const step = 10 ** Math.floor(Math.log10(value));
    return [1, 2, 2.5, 5, 10].map((m) => m * step).find((m) => m >= value);
  }

  function drawCharts() {
    for (const figure of document.querySelectorAll(".chart")) drawChart(figure, figure.dataset.metric);
  }

  function drawChart(figure, key) {
    const metric = METRICS[key];
    const canvas = figure.querySelector("canvas");
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    const ratio = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
    if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);

    const values = points.flatMap((p) => versions.map((v) => p.values[v] && p.values[v][key]))
      .filter((x) => x !== null && x !== undefined);
    let [low, high] = metric.range || [0, niceMax(Math.max(metric.floor || 0.1, ...values))];
    if (metric.range) low = Math.min(low, Math.floor(Math.min(low, ...values) * 10) / 10);
    const style = getComputedStyle(document.documentElement);
    const pad = { left: 58, right: 8, top: 6, bottom: 18 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const now = points.length ? points[points.length - 1].t : Date.now();
    const span = Math.min(WINDOW_MS, Math.max(MIN_SPAN_MS, points.length ? now - points[0].t : 0));
    const x = (t) => pad.left + plotW * (1 - (now - t) / span);
    const y = (v) => pad.top + plotH * (1 - (v - low) / (high - low));

    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = style.getPropertyValue("--muted");
    ctx.strokeStyle = style.getPropertyValue("--line");
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {
      const v = low + ((high - low) * i) / 4;
      const gy = Math.round(y(v)) + 0.5;
      ctx.beginPath(); ctx.moveTo(pad.left, gy); ctx.lineTo(width - pad.right, gy); ctx.stroke();
      ctx.fillText(metric.format(v), pad.left - 6, gy);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "alphabetic";
    const tick = TICK_STEPS_S.find((s) => span / 1000 / s <= 6) || 60;
    for (let s = Math.floor(span / 1000 / tick) * tick; s >= 0; s -= tick) {
      const label = s === 0 ? "now" : s < 60 ? `−${s} s` : `−${s / 60} min`;
      ctx.fillText(label, Math.min(x(now - s * 1000), width - pad.right - 12), height - 4);
    }
    if (!values.length) {
      ctx.font = "12px system-ui, sans-serif";
      ctx.fillText("no data yet", pad.left + plotW / 2, pad.top + plotH / 2);
    }

    const latest = {};
    ctx.lineWidth = 2;
    ctx.lineJoin = "round";
    for (const version of versions) {
      ctx.strokeStyle = ctx.fillStyle = colorOf(version);
      ctx.beginPath();
      let drawing = false;
      points.forEach((p, i) => {
        const v = p.values[version] && p.values[version][key];
        if (v === null || v === undefined) { drawing = false; return; }
        const next = points[i + 1] && points[i + 1].values[version];
        if (!drawing && (!next || next[key] === null || next[key] === undefined)) {
          ctx.fillRect(x(p.t) - 2, y(v) - 2, 4, 4); // a lone reading: a dot, not an invisible line
        }
        if (drawing) ctx.lineTo(x(p.t), y(v)); else ctx.moveTo(x(p.t), y(v));
        drawing = true;
        latest[version] = v;
      });
      ctx.stroke();
    }
    figure.dataset.points = points.filter((p) => versions.some((v) =>
      p.values[v] && p.values[v][key] !== null && p.values[v][key] !== undefined)).length;
    figure.dataset.latest = JSON.stringify(latest);
    figure.querySelector("output").textContent = Object.entries(latest)
      .map(([v, value]) => `${v} ${metric.format(value)}`).join(" · ");
  }

  window.addEventListener("resize", drawCharts);
  if (token) connect(token); else needToken();
  drawCharts();
})();
