// The network panel: every orchestrator the gateway knows, from GET /api/orchestrators.
(function () {
  "use strict";
  const table = document.getElementById("orchestrators");
  const body = table.querySelector("tbody");
  const empty = document.getElementById("no-orchestrators");
  const busyColumn = document.getElementById("busy-column");

  function cell(text, title) {
    const td = document.createElement("td");
    td.textContent = text;
    if (title) td.title = title;
    return td;
  }

  function status(o) {
    if (o.suspended_until) {
      const left = Math.max(0, Math.round(o.suspended_until - Date.now() / 1000));
      return ["suspended " + left + " s", o.last_error || ""];
    }
    if (o.last_error) return ["error", o.last_error];
    if (!o.transcoder) return ["not contacted yet", ""];
    if (o.busy_refusals) return ["ok", "refused " + o.busy_refusals + " segments as busy (at capacity)"];
    return ["ok", ""];
  }

  function render(list) {
    window.streamgwNetwork = list;
    empty.hidden = list.length > 0;
    table.hidden = list.length === 0;
    // Busy refusals: shown when the gateway reports them (older ones do not).
    const busy = list.some(function (o) { return typeof o.busy_refusals === "number"; });
    busyColumn.hidden = !busy;
    body.replaceChildren(...list.map(function (o) {
      const tr = document.createElement("tr");
      const price = o.pixels_per_unit ? (o.price_per_unit / o.pixels_per_unit).toPrecision(3) : "–";
      const [state, why] = status(o);
      tr.append(
        cell(o.address, o.transcoder ? "transcoder " + o.transcoder : ""),
        cell(price),
        cell(o.latency_score == null ? "–" : o.latency_score.toFixed(2) + " s/s",
          "round-trip seconds per second of media (moving average)"),
        cell(o.success_rate == null ? "–" : Math.round(o.success_rate * 100) + "%"),
        cell(String(o.segments)),
      );
      if (busy) {
        const refused = typeof o.busy_refusals === "number" ? o.busy_refusals : 0;
        const td = cell(String(refused), "segments refused because it was at capacity");
        td.dataset.field = "busy-refusals";
        if (refused) td.className = "busy";
        tr.append(td);
      }
      const models = Object.entries(o.live_models || {});
      const live = cell(models.length ? models.map(function ([name, m]) {
        return name + (m.warm ? " (warm) " : " (cold) ") + m.capacity_in_use + "/" + (m.capacity + m.capacity_in_use);
      }).join(", ") : "–", "live video-to-video pipelines (capability 35): streams running / streams it can run");
      live.dataset.field = "live-models";
      tr.append(
        cell(String(o.in_flight)),
        live,
        cell(state, why),
      );
      tr.className = state === "ok" ? "" : "warn";
      return tr;
    }));
  }

  async function poll() {
    try {
      const resp = await fetch("/api/orchestrators", { cache: "no-store" });
      if (resp.ok) render(await resp.json());
    } catch (err) {
      // The stream list shows connection problems; keep the last table.
    }
    setTimeout(poll, 2000);
  }
  poll();
})();
