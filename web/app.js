// streamgw web page: lists live streams (polling /api/streams) and plays one with hls.js: the one
// named by ?stream=, the one clicked, or the only live one. Plain JS, no build step. Player state
// for tests and debugging is on window.streamgwPlayer.
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
    url: null,           // the playlist being played (a rendition's when the source is not playable)
    autoSelected: false, // the stream was picked because it was the only one live
    rtmp: null,          // the publish URL shown (from /api/info)
  };
  window.streamgwPlayer = player;

  let hls = null;
  let playingStartedAt = null;   // started_at of the publication being played
  let playingUrl = null;         // the playlist URL hls.js was given
  let selected = new URLSearchParams(location.search).get("stream") || null;
  let autoSelected = false;      // selected only because it was the one live stream
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
    playingUrl = null;
    player.url = null;
  }

  function resetStats() {
    player.currentTime = 0;
    player.startTime = null;
    player.framesDecoded = 0;
    player.fragsLoaded = 0;
    player.errors = [];
  }

  // The rendition browsers can play when the source cannot (4:2:2, 10-bit...): the tallest one.
  function browserRendition(stream) {
    const height = (name) => { const m = /(\d+)p/.exec(name); return m ? Number(m[1]) : 0; };
    const others = (stream.renditions || []).filter((r) => r !== "source");
    others.sort((a, b) => height(b) - height(a));
    return others.length ? others[0] : null;
  }

  // What to play: the master playlist, or one rendition when the source cannot play in browsers
  // (null while that stream has no rendition yet).
  function playUrl(stream) {
    if (stream.browser_playable !== false) return stream.playlist;
    const rendition = browserRendition(stream);
    return rendition ? "/stream/" + encodeURIComponent(stream.name) + "/" + encodeURIComponent(rendition) + ".m3u8"
      : null;
  }

  function play(stream, url) {
    stopPlayer();
    resetStats();
    playingStartedAt = stream.started_at;
    playingUrl = url;
    player.url = url;
    setState("loading");
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
    autoSelected = false;
    player.autoSelected = false;
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
      const badges = el("span", null);
      badges.append(el("span", "badge state-" + s.state, s.state));
      const notes = warningsOf(s);
      if (notes.length) {
        const warn = el("span", "badge warn", "⚠ " + notes.length);
        warn.title = notes.join("\n");
        badges.append(" ", warn);
      }
      item.append(
        button,
        badges,
        el("span", "muted", fmtResolution(s) + " · " + fmtBitrate(s.bitrate) + " · " + fmtDuration(s.uptime)),
      );
      list.append(item);
    }
  }

  // The API's warnings about a stream (long keyframe interval...); absent on older gateways.
  function warningsOf(stream) {
    return Array.isArray(stream && stream.warnings) ? stream.warnings.map(String) : [];
  }

  function renderNotes(stream) {
    const list = $("warnings");
    const notes = warningsOf(stream);
    list.replaceChildren(...notes.map((w) => el("li", null, w)));
    list.hidden = notes.length === 0;
    const note = $("source-note");
    if (stream && stream.browser_playable === false) {
      const rendition = browserRendition(stream);
      note.textContent = "The source (" + (stream.codecs || "this codec") + ") cannot play in browsers; " +
        (rendition ? "playing the " + rendition + " rendition instead." : "waiting for a rendition to play instead.");
      note.hidden = false;
    } else {
      note.textContent = "";
      note.hidden = true;
    }
  }

  function renderInfo(stream) {
    const info = $("info");
    info.replaceChildren();
    renderNotes(stream);
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

  // With no stream asked for, play the only live one (and follow it if another replaces it).
  function autoSelect() {
    if (selected && !autoSelected) return;
    const live = lastStreams.filter((s) => s.state === "live");
    if (live.length !== 1 || live[0].name === selected) return;
    if (selected) { stopPlayer(); resetStats(); setState("idle"); }
    selected = live[0].name;
    autoSelected = true;
    player.autoSelected = true;
  }

  function render() {
    autoSelect();
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
    // Start when newly selected, after a fatal error (which clears playingStartedAt), when a new
    // publication replaced the old one, or when what to play changed (a rendition appeared).
    const url = playUrl(stream);
    if (stream.segments > 0 && url && (playingStartedAt !== stream.started_at || playingUrl !== url)) {
      play(stream, url);
    } else if (!url && stream.segments > 0 && player.state === "idle") {
      setState("waiting");
      $("player-state").textContent = "waiting for a rendition browsers can play…";
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

  // The publish instructions: the gateway's RTMP address as configured (its host, or this page's
  // host when it listens on every interface) and the port it is bound to.
  function showPublishAddress(info) {
    let host = (info && info.rtmp_host) || location.hostname || "HOST";
    if (host.includes(":") && !host.startsWith("[")) host = "[" + host + "]";  // IPv6
    const port = (info && info.rtmp_port) || 1935;
    const base = "rtmp://" + host + ":" + port + "/" + ((info && info.rtmp_app) || "live");
    player.rtmp = base;
    for (const node of document.querySelectorAll(".rtmp-url")) {
      node.textContent = base + (node.dataset.suffix || "");
    }
  }

  async function loadInfo() {
    try {
      const resp = await fetch("/api/info", { cache: "no-store" });
      if (resp.ok) showPublishAddress(await resp.json());  // else an older gateway: the default port stays
    } catch (err) {
      setTimeout(loadInfo, POLL_MS * 5);  // unreachable for now
    }
  }

  showPublishAddress(null);
  loadInfo();
  if (selected) player.stream = selected;
  poll();
})();
