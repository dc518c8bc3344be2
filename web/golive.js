// streamgw "go live" page: publish camera + microphone over WHIP, watch yourself back over WHEP and HLS,
// and measure glass-to-glass latency from a clock stamped into the picture. Plain JS, no build step.
// State for tests and debugging is on window.streamgwGoLive.
"use strict";

(function () {
  // ---- the clock stamp ------------------------------------------------------------------------
  // A strip across the top of the frame, 1/18 of its height, split into 32 cells (white = 1):
  // cells 0-1 = 1,0 (start), 2-25 = Date.now() mod 2^24 in ms (most significant bit first),
  // 26-29 = the number of one bits in the value mod 16, 30-31 = 0,1 (end). Relative geometry survives
  // the scaling a WebRTC sender may apply. benchmarks/webrtc_latency.py uses the same layout.
  const CELLS = 32;
  const VALUE_BITS = 24;
  const MASK = (1 << VALUE_BITS) - 1;
  const HLS_CONFIG = { liveSyncDurationCount: 1, liveMaxLatencyDurationCount: 3, maxLiveSyncPlaybackRate: 1.5,
                       lowLatencyMode: true, backBufferLength: 10, enableWorker: true };

  function popcount(v) { let n = 0; while (v) { n += v & 1; v >>>= 1; } return n; }

  function stampBits(ms) {
    const value = ms & MASK;
    const bits = [1, 0];
    for (let i = VALUE_BITS - 1; i >= 0; i--) bits.push((value >>> i) & 1);
    const check = popcount(value) & 15;
    for (let i = 3; i >= 0; i--) bits.push((check >>> i) & 1);
    bits.push(0, 1);
    return bits;
  }

  function drawStamp(ctx, w, h, ms) {
    const band = Math.max(2, Math.round(h / 18));
    const bits = stampBits(ms);
    for (let i = 0; i < CELLS; i++) {
      const x0 = Math.round(i * w / CELLS);
      const x1 = Math.round((i + 1) * w / CELLS);
      ctx.fillStyle = bits[i] ? "#fff" : "#000";
      ctx.fillRect(x0, 0, x1 - x0, band);
    }
  }

  // Reads the stamp from what a <video> shows now; null if there is none (or it does not check).
  function readStamp(video, canvas) {
    const w = video.videoWidth;
    const h = video.videoHeight;
    if (!w || !h) return null;
    const band = Math.max(2, Math.round(h / 18));
    canvas.width = w;
    canvas.height = band;
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(video, 0, 0, w, band, 0, 0, w, band);
    const data = ctx.getImageData(0, 0, w, band).data;
    const y = Math.floor(band / 2);
    const bits = [];
    for (let i = 0; i < CELLS; i++) {
      const cx = Math.floor((i + 0.5) * w / CELLS);
      let sum = 0;
      let n = 0;
      for (let dy = -1; dy <= 1; dy++) {
        for (let dx = -2; dx <= 2; dx++) {
          const px = Math.min(w - 1, Math.max(0, cx + dx));
          const py = Math.min(band - 1, Math.max(0, y + dy));
          sum += data[(py * w + px) * 4 + 1];  // green ~ luma
          n++;
        }
      }
      bits.push(sum / n > 128 ? 1 : 0);
    }
    if (bits[0] !== 1 || bits[1] !== 0 || bits[30] !== 0 || bits[31] !== 1) return null;
    let value = 0;
    for (let i = 2; i < 2 + VALUE_BITS; i++) value = value * 2 + bits[i];
    let check = 0;
    for (let i = 26; i < 30; i++) check = check * 2 + bits[i];
    return check === (popcount(value) & 15) ? value : null;
  }

  function latencyOf(stamp) {
    return ((Date.now() & MASK) - stamp + (1 << VALUE_BITS)) % (1 << VALUE_BITS);
  }

  function median(values) {
    if (!values.length) return null;
    const s = values.slice().sort((a, b) => a - b);
    return s[Math.floor(s.length / 2)];
  }

  // ---- state -------------------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);
  const state = {
    state: "idle",          // idle | starting | live | stopping | error
    stream: null,
    whip: { status: null, location: null, connection: null },
    whep: { state: "idle", status: null, location: null, connection: null, framesDecoded: 0, currentTime: 0,
            codec: null },
    hls: { state: "idle", fragsLoaded: 0, currentTime: 0, framesDecoded: 0 },
    latency: { whep: null, hls: null, whepSamples: 0, hlsSamples: 0 },
    sent: { width: null, height: null, codec: null },
    ai: { pipeline: null, state: "idle", framesDecoded: 0, currentTime: 0, status: null, updates: 0,
          lastUpdate: null, params: {} },
    pipelines: [],
    errors: [],
  };
  window.streamgwGoLive = state;

  let media = null;          // the camera + microphone MediaStream
  let published = null;      // what is sent (the stamped canvas's video + the microphone)
  let canvasTimer = null;
  let whipPc = null;
  let whepPc = null;
  let aiPc = null;
  let aiLocation = null;
  let hls = null;
  let timers = [];
  const samples = { whep: [], hls: [] };

  function setStatus(text, isError) {
    $("status").textContent = text;
    $("status").className = isError ? "error" : "muted";
  }

  function fail(where, err) {
    const message = where + ": " + (err && err.message ? err.message : String(err));
    state.errors.push(message);
    console.error(message);
    setStatus(message, true);
  }

  // ---- devices -----------------------------------------------------------------------------

  async function listDevices() {
    const devices = await navigator.mediaDevices.enumerateDevices();
    for (const [kind, select] of [["videoinput", $("camera")], ["audioinput", $("microphone")]]) {
      const current = select.value;
      select.replaceChildren(new Option(kind === "videoinput" ? "default camera" : "default microphone", ""));
      for (const d of devices.filter((x) => x.kind === kind)) {
        select.append(new Option(d.label || d.deviceId.slice(0, 8), d.deviceId));
      }
      select.value = current;
    }
  }

  async function openMedia() {
    const [w, h] = $("resolution").value.split("x").map(Number);
    const video = { width: { ideal: w }, height: { ideal: h }, frameRate: { ideal: 30 } };
    if ($("camera").value) video.deviceId = { exact: $("camera").value };
    const audio = { echoCancellation: true, noiseSuppression: true };
    if ($("microphone").value) audio.deviceId = { exact: $("microphone").value };
    const stream = await navigator.mediaDevices.getUserMedia({ video, audio });
    await listDevices();  // labels are known once permission is granted
    return stream;
  }

  // The camera drawn into a canvas with the clock stamp on top; the canvas is what is published.
  function stampedVideo(stream) {
    const track = stream.getVideoTracks()[0];
    const settings = track.getSettings();
    const source = document.createElement("video");
    source.muted = true;
    source.playsInline = true;
    source.srcObject = new MediaStream([track]);
    source.play().catch(() => {});
    const canvas = document.createElement("canvas");
    canvas.width = settings.width || 1280;
    canvas.height = settings.height || 720;
    const ctx = canvas.getContext("2d");
    const draw = () => {
      if (source.videoWidth && (source.videoWidth !== canvas.width || source.videoHeight !== canvas.height)) {
        canvas.width = source.videoWidth;
        canvas.height = source.videoHeight;
      }
      ctx.drawImage(source, 0, 0, canvas.width, canvas.height);
      drawStamp(ctx, canvas.width, canvas.height, Date.now());
    };
    // A timer, not requestAnimationFrame: it keeps running when the tab is in the background.
    canvasTimer = setInterval(draw, 1000 / 30);
    draw();
    return canvas.captureStream(30).getVideoTracks()[0];
  }

  // ---- WHIP / WHEP -------------------------------------------------------------------------

  function waitGathering(pc, ms) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      pc.addEventListener("icegatheringstatechange", () => {
        if (pc.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
      });
    });
  }

  // One offer/answer over HTTP (RFC 9725 / WHEP): no trickle ICE, so the offer carries the candidates.
  async function exchange(pc, url, token) {
    await pc.setLocalDescription(await pc.createOffer());
    await waitGathering(pc, 2000);
    const headers = { "Content-Type": "application/sdp" };
    if (token) headers.Authorization = "Bearer " + token;
    const res = await fetch(url, { method: "POST", headers, body: pc.localDescription.sdp });
    const body = await res.text();
    if (res.status !== 201) {
      const err = new Error(res.status + " " + (body || res.statusText));
      err.status = res.status;
      throw err;
    }
    await pc.setRemoteDescription({ type: "answer", sdp: body });
    return { status: res.status, location: new URL(res.headers.get("Location"), location.href).pathname };
  }

  async function whipPublish(stream, tracks, token) {
    const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle" });
    for (const track of tracks) pc.addTransceiver(track, { direction: "sendonly" });
    pc.addEventListener("connectionstatechange", () => {
      state.whip.connection = pc.connectionState;
      if (pc.connectionState === "failed") fail("WHIP", "the connection failed");
    });
    whipPc = pc;
    let path = "/whip/" + encodeURIComponent(stream);
    if (state.ai.pipeline) {
      path += "?pipeline=" + encodeURIComponent(state.ai.pipeline);
      if (Object.keys(state.ai.params).length) path += "&params=" + encodeURIComponent(JSON.stringify(state.ai.params));
    }
    const r = await exchange(pc, path, token);
    state.whip.status = r.status;
    state.whip.location = r.location;
  }

  async function whepPlay(stream, rendition) {
    stopWhep();
    const video = $("whep-video");
    const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle" });
    whepPc = pc;
    for (const kind of ["video", "audio"]) {
      const t = pc.addTransceiver(kind, { direction: "recvonly" });
      if ("jitterBufferTarget" in t.receiver) t.receiver.jitterBufferTarget = 0;  // lowest latency
    }
    const ms = new MediaStream();
    pc.addEventListener("track", (e) => {
      ms.addTrack(e.track);
      video.srcObject = ms;
      video.play().catch(() => {});
    });
    pc.addEventListener("connectionstatechange", () => {
      state.whep.connection = pc.connectionState;
      $("whep-state").textContent = "WebRTC " + pc.connectionState;
    });
    state.whep.state = "connecting";
    const path = "/whep/" + encodeURIComponent(stream) +
      (rendition && rendition !== "source" ? "/" + encodeURIComponent(rendition) : "");
    const r = await exchange(pc, path, null);
    state.whep.status = r.status;
    state.whep.location = r.location;
    state.whep.state = "playing";
  }

  function stopWhep() {
    if (state.whep.location) {
      fetch(state.whep.location, { method: "DELETE" }).catch(() => {});
      state.whep.location = null;
    }
    if (whepPc) { whepPc.close(); whepPc = null; }
    $("whep-video").srcObject = null;
    state.whep.state = "idle";
    state.whep.codec = null;
  }

  // ---- live AI -----------------------------------------------------------------------------

  async function loadPipelines() {
    const res = await fetch("/api/live", { cache: "no-store" }).catch(() => null);
    if (!res || !res.ok) return;  // no orchestrators: no live AI
    const body = await res.json();
    state.pipelines = body.pipelines;
    const select = $("pipeline");
    for (const p of body.pipelines) {
      const option = document.createElement("option");
      option.value = p.name;
      option.textContent = p.name + " (" + p.orchestrators + " orchestrator" + (p.orchestrators === 1 ? "" : "s") + ")";
      select.append(option);
    }
    const wanted = new URLSearchParams(location.search).get("pipeline");
    if (wanted && body.pipelines.some((p) => p.name === wanted)) { select.value = wanted; choosePipeline(); }
  }

  function hex(rgb) {
    return "#" + rgb.map((c) => c.toString(16).padStart(2, "0")).join("");
  }

  function choosePipeline() {
    const name = $("pipeline").value || null;
    state.ai.pipeline = name;
    state.ai.params = {};
    $("ai-panel").hidden = !name;
    const box = $("ai-controls");
    box.replaceChildren();
    const spec = name ? (state.pipelines.find((p) => p.name === name) || {}).params : null;
    for (const [key, p] of Object.entries(spec || {})) {
      const label = document.createElement("label");
      const title = document.createElement("span");
      title.textContent = key;
      const input = document.createElement("input");
      const shown = document.createElement("output");
      input.dataset.param = key;
      if (p.kind === "color") {
        input.type = "color";
        input.value = Array.isArray(p.default) ? hex(p.default) : String(p.default);
      } else {
        input.type = "range";
        input.min = p.low == null ? 0 : p.low;
        input.max = p.high == null ? 100 : p.high;
        input.step = p.kind === "int" ? 1 : (input.max - input.min) / 100;
        input.value = p.default;
      }
      shown.textContent = input.value;
      input.addEventListener("input", () => { shown.textContent = input.value; });
      input.addEventListener("change", () => {
        const value = p.kind === "color" ? input.value : Number(input.value);
        state.ai.params[key] = value;
        if (state.state === "live") sendUpdate({ [key]: value });
      });
      label.append(title, input, shown);
      box.append(label);
    }
  }

  async function sendUpdate(params) {
    const res = await fetch("/live/video-to-video/" + encodeURIComponent(state.stream) + "/update", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(params),
    }).catch((e) => { fail("update", e); return null; });
    if (!res) return;
    state.ai.lastUpdate = res.status;
    if (res.ok) state.ai.updates += 1;
    else fail("update", await res.text());
  }

  async function aiPlay(stream) {
    stopAi();
    const video = $("ai-video");
    const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle" });
    aiPc = pc;
    for (const kind of ["video", "audio"]) {
      const t = pc.addTransceiver(kind, { direction: "recvonly" });
      if ("jitterBufferTarget" in t.receiver) t.receiver.jitterBufferTarget = 0;
    }
    const ms = new MediaStream();
    pc.addEventListener("track", (e) => {
      ms.addTrack(e.track);
      video.srcObject = ms;
      video.play().catch(() => {});
    });
    state.ai.state = "connecting";
    const r = await exchange(pc, "/whep/" + encodeURIComponent(stream) + "/ai", null);
    aiLocation = r.location;
    state.ai.state = "playing";
  }

  function stopAi() {
    if (aiLocation) { fetch(aiLocation, { method: "DELETE" }).catch(() => {}); aiLocation = null; }
    if (aiPc) { aiPc.close(); aiPc = null; }
    $("ai-video").srcObject = null;
    state.ai.state = "idle";
  }

  async function refreshAi() {
    if (!state.ai.pipeline || !state.stream) return;
    const video = $("ai-video");
    state.ai.currentTime = video.currentTime;
    if (video.getVideoPlaybackQuality) state.ai.framesDecoded = video.getVideoPlaybackQuality().totalVideoFrames;
    const res = await fetch("/live/video-to-video/" + encodeURIComponent(state.stream) + "/status",
      { cache: "no-store" }).catch(() => null);
    if (!res || !res.ok) return;
    const st = await res.json();
    state.ai.status = st;
    const inference = st.inference_status || {};
    const input = st.input_status || {};
    const orch = st.orchestrator_info ? st.orchestrator_info.url : "no orchestrator";
    $("ai-info").textContent = st.pipeline_id + " on " + orch;
    $("ai-state").textContent = "fps in " + (input.fps == null ? "–" : input.fps.toFixed(1)) +
      ", out " + (inference.fps == null ? "–" : inference.fps.toFixed(1)) +
      ", segments " + st.streamgw.segments_out + (st.streamgw.swaps ? ", swaps " + st.streamgw.swaps : "") +
      (st.gateway_status && st.gateway_status.error ? " — " + st.gateway_status.error.error_message : "");
  }

  // ---- HLS ---------------------------------------------------------------------------------

  async function hlsPlay(stream, rendition) {
    stopHls();
    const video = $("hls-video");
    const url = "/stream/" + encodeURIComponent(stream) + "/" + encodeURIComponent(rendition || "source") + ".m3u8";
    state.hls.state = "waiting";
    $("hls-state").textContent = "waiting for the first segment…";
    const token = {};
    hlsPlay.current = token;
    for (let i = 0; i < 60; i++) {  // the first segment takes one segment duration
      const res = await fetch(url, { cache: "no-store" }).catch(() => null);
      if (hlsPlay.current !== token) return;
      if (res && res.ok && (await res.text()).includes("#EXTINF")) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    if (hlsPlay.current !== token) return;
    if (window.Hls && Hls.isSupported()) {
      hls = new Hls(HLS_CONFIG);
      hls.on(Hls.Events.FRAG_LOADED, () => { state.hls.fragsLoaded += 1; });
      hls.on(Hls.Events.ERROR, (_e, data) => {
        if (!data.fatal) return;
        if (data.type === Hls.ErrorTypes.MEDIA_ERROR) { hls.recoverMediaError(); return; }
        fail("HLS", data.details);
      });
      hls.loadSource(url);
      hls.attachMedia(video);
    } else if (video.canPlayType("application/vnd.apple.mpegurl")) {
      video.src = url;  // Safari plays HLS itself
    } else {
      fail("HLS", "this browser cannot play HLS");
      return;
    }
    state.hls.state = "playing";
    $("hls-state").textContent = "HLS " + url;
    video.play().catch(() => {});
  }

  function stopHls() {
    hlsPlay.current = null;
    if (hls) { hls.destroy(); hls = null; }
    const video = $("hls-video");
    video.removeAttribute("src");
    video.load();
    state.hls.state = "idle";
  }

  // ---- latency and stats -------------------------------------------------------------------

  const readers = { whep: document.createElement("canvas"), hls: document.createElement("canvas") };

  function sample(kind, video) {
    if (video.readyState < 2 || video.paused) return;
    const stamp = readStamp(video, readers[kind]);
    if (stamp === null) return;
    const list = samples[kind];
    list.push(latencyOf(stamp));
    if (list.length > 60) list.shift();
    state.latency[kind] = median(list);
    state.latency[kind + "Samples"] += 1;
    $(kind + "-latency").textContent = kind === "hls"
      ? (state.latency.hls / 1000).toFixed(1) + " s" : state.latency.whep + " ms";
  }

  function quality(video) {
    const q = video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality() : null;
    return q ? q.totalVideoFrames - q.droppedVideoFrames : (video.webkitDecodedFrameCount || 0);
  }

  async function refresh() {
    const wv = $("whep-video");
    const hv = $("hls-video");
    // Firefox counts no frames in getVideoPlaybackQuality() for a WebRTC stream: take the
    // receiver's own count (inbound-rtp framesDecoded) when there is one.
    let decoded = quality(wv);
    state.whep.currentTime = wv.currentTime;
    if (whepPc) {
      const pc = whepPc;
      try {
        const stats = await pc.getStats();
        stats.forEach((s) => {
          if (s.type === "inbound-rtp" && s.kind === "video") {
            if (typeof s.framesDecoded === "number") decoded = s.framesDecoded;
            const codec = s.codecId && stats.get(s.codecId);
            state.whep.codec = codec ? codec.mimeType : null;
            if (state.whep.codec) {  // H.264 as relayed, or VP8 for browsers without H.264
              $("whep-state").textContent = "WebRTC " + pc.connectionState + ", " +
                state.whep.codec.replace("video/", "");
            }
          }
        });
      } catch (_e) { /* closed meanwhile */ }
    }
    state.whep.framesDecoded = decoded;
    state.hls.framesDecoded = quality(hv);
    state.hls.currentTime = hv.currentTime;
    if (whipPc) {
      try {
        const stats = await whipPc.getStats();
        stats.forEach((s) => {
          if (s.type === "outbound-rtp" && s.kind === "video") {
            state.sent.width = s.frameWidth || null;
            state.sent.height = s.frameHeight || null;
            const codec = s.codecId && stats.get(s.codecId);
            state.sent.codec = codec ? codec.mimeType : null;
            $("local-info").textContent = (s.frameWidth ? s.frameWidth + "×" + s.frameHeight : "") +
              (s.framesPerSecond ? " " + Math.round(s.framesPerSecond) + " fps" : "") +
              (state.sent.codec ? " " + state.sent.codec.replace("video/", "") : "");
          }
        });
      } catch (_e) { /* closed meanwhile */ }
    }
    if (state.stream) {
      const res = await fetch("/api/streams/" + encodeURIComponent(state.stream)).catch(() => null);
      if (res && res.ok) {
        const info = await res.json();
        const select = $("rendition");
        const have = new Set(Array.from(select.options).map((o) => o.value));
        for (const r of info.renditions || []) {
          if (!have.has(r)) select.append(new Option(r, r));
        }
        $("local-state").textContent = "live: " + info.segments + " segments, " +
          Math.round(info.bitrate / 1000) + " kb/s to the gateway";
      }
    }
  }

  function startSampling() {
    timers.push(setInterval(() => { sample("whep", $("whep-video")); sample("hls", $("hls-video")); }, 100));
    timers.push(setInterval(() => { refresh().catch(() => {}); refreshAi().catch(() => {}); }, 1000));
  }

  // ---- start / stop ------------------------------------------------------------------------

  async function start() {
    const stream = $("stream").value.trim();
    if (!stream) { fail("setup", "choose a stream name"); return; }
    $("start").disabled = true;
    state.state = "starting";
    state.stream = stream;
    state.errors = [];
    setStatus("starting…");
    try {
      media = await openMedia();
      $("local-video").srcObject = media;
      const settings = media.getVideoTracks()[0].getSettings();
      $("local-state").textContent = "camera " + settings.width + "×" + settings.height;
      const video = $("stamp").checked ? stampedVideo(media) : media.getVideoTracks()[0];
      published = [video, ...media.getAudioTracks()];
      await whipPublish(stream, published, $("token").value.trim());
      state.state = "live";
      setStatus("live as " + stream);
      $("stop").disabled = false;
      $("pipeline").disabled = true;  // the pipeline is chosen for the session; its parameters change live
      history.replaceState(null, "", "?stream=" + encodeURIComponent(stream));
      const rendition = $("rendition").value;
      await whepPlay(stream, rendition).catch((e) => fail("WHEP", e));
      if (state.ai.pipeline) aiPlay(stream).catch((e) => fail("AI WHEP", e));
      hlsPlay(stream, rendition).catch((e) => fail("HLS", e));
      startSampling();
    } catch (err) {
      state.state = "error";
      fail("WHIP", err);
      await stop();
    }
  }

  async function stop() {
    if (state.state === "live") state.state = "stopping";
    for (const t of timers) clearInterval(t);
    timers = [];
    stopWhep();
    stopAi();
    stopHls();
    if (state.whip.location) {
      const headers = {};
      const token = $("token").value.trim();
      if (token) headers.Authorization = "Bearer " + token;
      await fetch(state.whip.location, { method: "DELETE", headers }).catch(() => {});
      state.whip.location = null;
    }
    if (whipPc) { whipPc.close(); whipPc = null; }
    if (canvasTimer) { clearInterval(canvasTimer); canvasTimer = null; }
    for (const track of [...(published || []), ...(media ? media.getTracks() : [])]) track.stop();
    media = published = null;
    $("local-video").srcObject = null;
    samples.whep = [];
    samples.hls = [];
    if (state.state !== "error") { state.state = "idle"; setStatus("idle"); }
    $("start").disabled = false;
    $("stop").disabled = true;
    $("pipeline").disabled = false;
  }

  // Switching the watched rendition while live re-subscribes WHEP and HLS.
  $("rendition").addEventListener("change", () => {
    if (state.state !== "live") return;
    samples.whep = [];
    samples.hls = [];
    whepPlay(state.stream, $("rendition").value).catch((e) => fail("WHEP", e));
    hlsPlay(state.stream, $("rendition").value).catch((e) => fail("HLS", e));
  });

  $("pipeline").addEventListener("change", () => { if (state.state !== "live") choosePipeline(); });
  $("start").addEventListener("click", () => { start(); });
  $("stop").addEventListener("click", () => { stop(); });
  window.addEventListener("pagehide", () => { if (state.state === "live") stop(); });

  const params = new URLSearchParams(location.search);
  $("stream").value = params.get("stream") || "live-" + Math.random().toString(36).slice(2, 8);
  $("whip-url").textContent = location.origin + "/whip/" + $("stream").value;
  $("stream").addEventListener("input", () => {
    $("whip-url").textContent = location.origin + "/whip/" + ($("stream").value.trim() || "STREAM");
  });
  loadPipelines().catch(() => {});
  if (!window.RTCPeerConnection || !navigator.mediaDevices) {
    fail("setup", "this browser has no WebRTC (or the page is not on https or localhost)");
    $("start").disabled = true;
  }
})();
