// streamgw web page: lists live streams (polling /api/streams) and plays one with hls.js.
// Plain JS, no build step. Player state for tests and debugging is on window.streamgwPlayer.
"use strict";

(function () {
  const POLL_MS = 2000;
  const HLS_CONFIG = {
    // Start and stay ~2 segments behind the live edge; catch up (slightly faster playback)
    // instead of jumping unless latency grows past 5 segments.
    liveSyncDurationCount: 2,
    liveMaxLatencyDurationCount: 5,
    maxLiveSyncPlaybackRate: 1.5,
    lowLatencyMode: true,
    backBufferLength: 30,
    enableWorker: true,
  };

  const $ = (id) => document.getElementById(id);
  const video = $("video");

  // Everything a test (or a curious human in the console) may want to read.
  const player = {
    stream: null,        // name of the selected stream
    state: "idle",       // idle | waiting | loading | playing | buffering | paused | ended | error
    currentTime: 0,      // video.currentTime
    startTime: null,     // currentTime when playback first started
    framesDecoded: 0,    // from video.getVideoPlaybackQuality()
    fragsLoaded: 0,      // hls.js FRAG_LOADED events
    errors: [],          // hls.js errors: {type, details, fatal}
    streams: [],         // names in the last /api/streams answer
    polls: 0,            // successful polls
  };
  window.streamgwPlayer = player;

  let hls = null;
  let playingStartedAt = null;   // started_at of the publication being played
  let selected = new URLSearchParams(location.search).get("stream") || null;
  let lastStreams = [];

  // ---- formatting -------------------------------------------------------------------------

  function fmtBitrate(bps) {
    if (!bps) return "—";
    if (bps >= 1e6) return (bps / 1e6).toFixed(2) + " Mb/s";
    return Math.round(bps / 1e3) + " kb/s";
  }

  function fmtDuration(seconds) {
    const s = Math.max(0, Math.floor(seconds || 0));
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const pad = (n) => String(n).padStart(2, "0");
    return (h ? h + ":" + pad(m) : String(m)) + ":" + pad(s % 60);
  }

  function fmtResolution(s) {
    return s.width && s.height ? s.width + "×" + s.height : "—";
  }

  function fmtFps(fps) {
    return fps ? (Math.round(fps * 100) / 100) + " fps" : "—";
  }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;  // never innerHTML: names come from publishers
    return node;
  }

  // ---- player -----------------------------------------------------------------------------

  function setState(state) {
    player.state = state;
    $("player-state").textContent = state;
  }

  function stopPlayer() {
    if (hls) {
      hls.destroy();
      hls = null;
    }
    video.removeAttribute("src");
    video.load();
    playingStartedAt = null;
  }

  function resetStats() {
    player.currentTime = 0;
    player.startTime = null;
    player.framesDecoded = 0;
    player.fragsLoaded = 0;
    player.errors = [];
  }

  function play(stream) {
    stopPlayer();
    resetStats();
    playingStartedAt = stream.started_at;
    setState("loading");
    const url = stream.playlist;
    $("playlist-url").textContent = url;
    $("playlist-url").href = url;
    $("playlist-link").hidden = false;

    if (window.Hls && Hls.isSupported()) {
      hls = new Hls(HLS_CONFIG);
      hls.on(Hls.Events.FRAG_LOADED, () => { player.fragsLoaded += 1; });
      hls.on(Hls.Events.MANIFEST_PARSED, () => {
        video.play().catch(() => { /* autoplay refused: the controls are there */ });
      });
      hls.on(Hls.Events.ERROR, (_event, data) => {
        player.errors.push({ type: data.type, details: data.details, fatal: !!data.fatal });
        if (player.errors.length > 50) player.errors.shift();
        if (!data.fatal) return;
        if (data.type === Hls.ErrorTypes.MEDIA_ERROR) {
          hls.recoverMediaError();
        } else {
          // Network or other fatal error: give up now; the next poll restarts it if still live.
          setState("error");
          if (hls) { hls.destroy(); hls = null; }
          playingStartedAt = null;
        }
      });
      hls.loadSource(url);
      hls.attachMedia(video);
    } else if (video.canPlayType("application/vnd.apple.mpegurl")) {
      video.src = url;  // Safari plays HLS natively
      video.play().catch(() => {});
    } else {
      setState("error");
      player.errors.push({ type: "unsupported", details: "no MSE and no native HLS", fatal: true });
    }
  }

  video.addEventListener("playing", () => {
    if (player.startTime === null) player.startTime = video.currentTime;
    setState("playing");
  });
  video.addEventListener("waiting", () => setState("buffering"));
  video.addEventListener("pause", () => { if (!video.ended && player.state === "playing") setState("paused"); });
  video.addEventListener("ended", () => setState("ended"));
  video.addEventListener("timeupdate", () => {
    player.currentTime = video.currentTime;
    if (video.getVideoPlaybackQuality) {
      player.framesDecoded = video.getVideoPlaybackQuality().totalVideoFrames;
    }
  });

  function select(name) {
    if (name !== selected) {
      stopPlayer();
      resetStats();
      setState("idle");
    }
    selected = name;
    player.stream = name;
    const params = new URLSearchParams(location.search);
    params.set("stream", name);
    history.replaceState(null, "", "?" + params.toString());
    playingStartedAt = null;  // force (re)start on render
    render();
  }

  // ---- rendering --------------------------------------------------------------------------

  function renderList(streams) {
    const list = $("streams");
    list.replaceChildren();
    $("no-streams").hidden = streams.length > 0;
    for (const s of streams) {
      const item = el("li", s.name === selected ? "stream selected" : "stream");
      item.dataset.stream = s.name;
      const button = el("button", "stream-name", s.name);
      button.type = "button";
      button.addEventListener("click", () => select(s.name));
      item.append(
        button,
        el("span", "badge state-" + s.state, s.state),
        el("span", "muted", fmtResolution(s) + " · " + fmtBitrate(s.bitrate) + " · " + fmtDuration(s.uptime)),
      );
      list.append(item);
    }
  }

  function renderInfo(stream) {
    const info = $("info");
    info.replaceChildren();
    if (!stream) return;
    const rows = [
      ["State", stream.state],
      ["Resolution", fmtResolution(stream)],
      ["Frame rate", fmtFps(stream.fps)],
      ["Bitrate", fmtBitrate(stream.bitrate)],
      ["Uptime", fmtDuration(stream.uptime)],
      ["Segments", String(stream.segments)],
      ["Codecs", stream.codecs || "—"],
      ["Renditions", (stream.renditions || []).join(", ") || "—"],
      ["Publisher", stream.publisher || "—"],
    ];
    for (const [k, v] of rows) {
      const row = el("div", "row");
      row.dataset.field = k.toLowerCase().replace(" ", "-");
      row.append(el("dt", null, k), el("dd", null, v));
      info.append(row);
    }
  }

  function render() {
    renderList(lastStreams);
    player.stream = selected;
    if (!selected) {
      $("player-title").textContent = lastStreams.length ? "Pick a stream" : "No live streams";
      return;
    }
    $("player-title").textContent = selected;
    const stream = lastStreams.find((s) => s.name === selected);
    renderInfo(stream);
    if (!stream) {
      if (hls || playingStartedAt !== null) {
        // Stream gone: let hls.js play out what it has; restart when it comes back.
        playingStartedAt = null;
      } else if (player.state !== "ended") {
        setState("waiting");
        $("player-state").textContent = "waiting for " + selected + " to go live…";
      }
      return;
    }
    // Start when newly selected, after a fatal error (which clears playingStartedAt), or when a
    // new publication replaced the old one.
    if (stream.segments > 0 && playingStartedAt !== stream.started_at) {
      play(stream);
    }
  }

  // ---- polling ----------------------------------------------------------------------------

  async function poll() {
    try {
      const resp = await fetch("/api/streams", { cache: "no-store" });
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      lastStreams = await resp.json();
      player.streams = lastStreams.map((s) => s.name);
      player.polls += 1;
      $("status").textContent = lastStreams.length + " live · updated " + new Date().toLocaleTimeString();
      $("status").className = "muted";
    } catch (err) {
      $("status").textContent = "gateway unreachable (" + err.message + ")";
      $("status").className = "error";
    }
    render();
    setTimeout(poll, POLL_MS);
  }

  function showPublishHost() {
    const host = location.hostname || "HOST";
    for (const node of document.querySelectorAll(".rtmp-url")) {
      node.textContent = node.textContent.replace("HOST", host);
    }
  }

  showPublishHost();
  if (selected) player.stream = selected;
  poll();
})();
