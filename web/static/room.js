// Live consult room (会诊室): signalling over a WebSocket, one peer connection to the server,
// the shared DICOM view over a data channel.
//
// The offer carries our camera and microphone (sendonly) and SLOTS recvonly video/audio pairs;
// the server fills slots with other participants and says which is which ("slots"), so joins
// and leaves never renegotiate. The shared view is not a screen share: the lead's viewer
// state goes to every follower, whose own viewer renders the same image from DICOMweb.
//
// The presenter also offers an empty sendonly video m-line for the ultrasound (a capture card
// that the machine's video output feeds shows as a camera); sharing puts the device's track on
// it, and the others see it large over the shared view, with its measured size and rate. Every
// page offers one more recvonly video m-line, the stage, that only an ultrasound fills: a room
// full of cameras still shows it.
"use strict";

(function () {
  const SLOTS = 5;
  const LOW = { maxBitrate: 150000, width: 320, height: 240, maxFramerate: 15 };
  // The ultrasound in low-bandwidth mode, as consult/rooms.py SHAPES says why: 480 lines, 15 fps.
  const US_LOW = { maxBitrate: 500000, lines: 480, maxFramerate: 15 };
  // A capture card's name, to offer it first; otherwise any device that is not the camera.
  const CAPTURE = /capture|grabber|hdmi|sdi|cam ?link|ultra|超声|采集/i;
  const root = document.getElementById("room");
  const consultId = root.dataset.consult;
  const me = root.dataset.user;
  const myRole = root.dataset.role;
  const $ = (id) => document.getElementById(id);

  const R = {
    ws: null, pc: null, channel: null, local: null, camera: null, mic: null, screen: null,
    videoTx: null, audioTx: null, mode: "normal", lead: null, slots: [], participants: [],
    viewer: null, frameDoc: null, pending: null, applying: false, applied: [], closed: false,
    frames: {}, // participant -> decoded frame count (requestVideoFrameCallback)
    shown: {}, // follower -> what their viewer shows of the shared view (seen by the lead)
    ultrasound: null, usTx: null, // the presenter's ultrasound track and its transceiver
    usShown: true, usIn: null, usOut: null, // stage shown over the images; measured in / out
  };

  function status(text) { $("room-status").textContent = text; }

  async function iceServers() {
    try {
      const response = await fetch(`/api/rooms/${consultId}/ice`, { credentials: "same-origin" });
      if (response.ok) return (await response.json()).iceServers;
    } catch (err) { /* fall back to host candidates */ }
    return [];
  }

  async function openDevices() {
    // Weak 4G or no camera: the room still works with audio, or with nothing to send.
    const attempts = [{ audio: true, video: { width: 640, height: 480 } }, { audio: true }, { video: true }];
    for (const constraints of attempts) {
      try { return await navigator.mediaDevices.getUserMedia(constraints); } catch (err) { /* next */ }
    }
    return new MediaStream();
  }

  function send(message) {
    if (R.ws && R.ws.readyState === WebSocket.OPEN) R.ws.send(JSON.stringify(message));
  }

  function say(message) {
    if (R.channel && R.channel.readyState === "open") R.channel.send(JSON.stringify(message));
    else send(message); // the server takes view/chat/lead on the socket too
  }

  // ---- signalling ------------------------------------------------------------------------

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/ws/rooms/${consultId}`);
    R.ws = ws;
    ws.onmessage = (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch (err) { return; }
      onSignal(message).catch((err) => console.error("room", err));
    };
    ws.onclose = (event) => {
      if (R.closed) return;
      if (event.code >= 4400 && event.code < 4500) { status("无法进入 Cannot join"); return; }
      status("重新连接… Reconnecting…");
      hangUp();
      setTimeout(connect, 2000); // a dropped participant rejoins by itself
    };
  }

  async function onSignal(message) {
    switch (message.type) {
      case "welcome":
        R.lead = message.lead;
        $("room-consent").checked = Boolean(message.you.consent);
        showParticipants(message.participants);
        showRecording(message.recording);
        await negotiate();
        break;
      case "answer":
        await R.pc.setRemoteDescription({ type: "answer", sdp: message.sdp });
        break;
      case "slots": R.slots = message.slots; showSlots(); break;
      case "participants": R.lead = message.lead; showParticipants(message.participants); break;
      case "recording": showRecording(message); break;
      case "error":
        if (message.code === "refused") status(`无法进入 Cannot join: ${message.detail}`);
        else if (message.code === "peer-failed") renegotiate();
        else console.warn("room error", message);
        break;
      default: onRoomMessage(message);
    }
  }

  async function negotiate() {
    const pc = new RTCPeerConnection({ iceServers: await iceServers() });
    R.pc = pc;
    const video = R.screen || R.camera;
    R.videoTx = pc.addTransceiver(video && R.mode !== "audio" ? video : "video", { direction: "sendonly" });
    R.audioTx = pc.addTransceiver(R.mic || "audio", { direction: "sendonly" });
    // Offered from the start, empty until shared: sharing later needs no renegotiation.
    R.usTx = myRole === "presenter"
      ? pc.addTransceiver(R.ultrasound && R.mode !== "audio" ? R.ultrasound : "video", { direction: "sendonly" }) : null;
    for (let i = 0; i < SLOTS; i++) {
      pc.addTransceiver("video", { direction: "recvonly" });
      pc.addTransceiver("audio", { direction: "recvonly" });
    }
    // The stage: a slot only an ultrasound fills, so that it shows in a full room as well.
    const stage = pc.addTransceiver("video", { direction: "recvonly" });
    R.channel = pc.createDataChannel("room");
    R.channel.onmessage = (event) => {
      try { onRoomMessage(JSON.parse(event.data)); } catch (err) { console.error("room", err); }
    };
    pc.onconnectionstatechange = () => {
      if (pc !== R.pc) return;
      if (pc.connectionState === "connected") status("已连接 Connected");
      if (pc.connectionState === "failed") renegotiate();
    };
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc); // the server (aiortc) does not take trickled candidates
    send({ type: "offer", sdp: pc.localDescription.sdp, ultrasound: R.usTx ? R.usTx.mid : null, stage: stage.mid });
    if (R.ultrasound) send({ type: "ultrasound", on: true }); // a new socket after a drop
    if (R.mode === "low") await capSender();
    await tuneUltrasound();
  }

  function gathered(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { if (pc.iceGatheringState === "complete") resolve(); };
      pc.addEventListener("icegatheringstatechange", done);
      setTimeout(resolve, 3000); // TURN that never answers must not stall the room
    });
  }

  function hangUp() {
    if (R.pc) { try { R.pc.close(); } catch (err) { /* already closed */ } }
    R.pc = null; R.channel = null; R.slots = []; showSlots();
  }

  function renegotiate() {
    hangUp();
    setTimeout(() => negotiate().catch((err) => console.error("room", err)), 1000);
  }

  // ---- videos --------------------------------------------------------------------------

  function showSlots() {
    const box = $("room-videos");
    const cameras = R.slots.filter((s) => s.participant && s.source !== "ultrasound");
    const wanted = new Set(cameras.map((s) => s.video_mid));
    for (const tile of [...box.querySelectorAll("[data-mid]")]) {
      if (!wanted.has(tile.dataset.mid) || tile.dataset.participant !== slotOf(tile.dataset.mid).participant) tile.remove();
    }
    showUltrasound();
    if (!R.pc) return;
    for (const slot of cameras) {
      if (box.querySelector(`[data-mid="${slot.video_mid}"]`)) continue;
      const tracks = R.pc.getTransceivers().filter((t) => t.mid === slot.video_mid || t.mid === slot.audio_mid)
        .map((t) => t.receiver.track);
      const tile = document.createElement("div");
      tile.className = "room-tile";
      tile.dataset.mid = slot.video_mid;
      tile.dataset.participant = slot.participant;
      const video = document.createElement("video");
      video.autoplay = true; video.playsInline = true;
      video.srcObject = new MediaStream(tracks);
      const label = document.createElement("span");
      label.textContent = `${slot.name || slot.participant} · ${roleLabel(slot.role)}`;
      tile.append(video, label);
      box.append(tile);
      countFrames(video, slot.participant);
    }
  }

  function slotOf(mid) { return R.slots.find((s) => s.video_mid === mid) || {}; }

  function roleLabel(role) {
    return { presenter: "汇报 Presenter", specialist: "专家 Specialist", reviewer: "审核 Reviewer",
             coordinator: "协调 Coordinator" }[role] || "";
  }

  function countFrames(video, who) {
    R.frames[who] = 0;
    if (!video.requestVideoFrameCallback) return;
    const tick = () => { R.frames[who] = (R.frames[who] || 0) + 1; if (video.isConnected) video.requestVideoFrameCallback(tick); };
    video.requestVideoFrameCallback(tick);
  }

  function showParticipants(list) {
    R.participants = list;
    $("room-lead").textContent = (list.find((p) => p.username === R.lead) || {}).name || R.lead || "—";
    const select = $("room-lead-to");
    select.replaceChildren(...list.filter((p) => p.username !== R.lead).map((p) => new Option(p.name, p.username)));
    $("room-hand-over").disabled = !(R.lead === me || myRole === "coordinator") || !select.options.length;
  }

  function showRecording(rec) {
    const labels = { off: "未录制 Not recording", recording: "录制中 Recording",
      "waiting-consent": `等待同意 Waiting for consent: ${(rec.missing_consent || []).join(", ")}`,
      "waiting-media": "等待画面 Waiting for media" };
    $("room-recording").textContent = labels[rec.state] || rec.state;
    $("room-record").setAttribute("aria-pressed", String(rec.state !== "off"));
  }

  // ---- devices and bandwidth -----------------------------------------------------------

  async function capSender() {
    // Township on weak 4G: 320x240 at 150 kbps upstream, the server sends 320x240 down.
    const sender = R.videoTx && R.videoTx.sender;
    if (!sender || !sender.track) return;
    const params = sender.getParameters();
    if (!params.encodings || !params.encodings.length) params.encodings = [{}];
    const settings = sender.track.getSettings();
    const scale = Math.max(1, (settings.width || 640) / LOW.width);
    Object.assign(params.encodings[0], R.mode === "low"
      ? { maxBitrate: LOW.maxBitrate, scaleResolutionDownBy: scale, maxFramerate: LOW.maxFramerate }
      : { maxBitrate: undefined, scaleResolutionDownBy: 1, maxFramerate: undefined });
    try { await sender.setParameters(params); } catch (err) { console.warn("room setParameters", err); }
  }

  async function setMode(mode) {
    R.mode = mode;
    send({ type: "mode", mode });
    showUltrasound();
    if (!R.videoTx) return;
    await R.videoTx.sender.replaceTrack(mode === "audio" ? null : (R.screen || R.camera));
    await capSender();
    if (R.usTx) await R.usTx.sender.replaceTrack(mode === "audio" ? null : R.ultrasound);
    await tuneUltrasound();
  }

  async function toggleScreen() {
    if (R.screen) { R.screen.stop(); R.screen = null; }
    else {
      try {
        const stream = await navigator.mediaDevices.getDisplayMedia({ video: true });
        R.screen = stream.getVideoTracks()[0];
        R.screen.onended = () => { R.screen = null; toggleBack(); };
      } catch (err) { return; }
    }
    await toggleBack();
  }

  /** The button shows "pressed" only once the screen is what the others receive: replaceTrack
   *  resolves after the sender switched, and a loaded machine takes a moment to get there. */
  async function toggleBack() {
    if (R.videoTx && R.mode !== "audio") {
      try { await R.videoTx.sender.replaceTrack(R.screen || R.camera); await capSender(); }
      catch (err) { console.warn("room replaceTrack", err); }
    }
    $("room-screen").setAttribute("aria-pressed", String(Boolean(R.screen)));
  }

  function toggleTrack(track, button) {
    if (!track) return;
    track.enabled = !track.enabled;
    button.setAttribute("aria-pressed", String(track.enabled));
  }

  // ---- ultrasound ----------------------------------------------------------------------

  /** The capture devices the browser lists; a capture card is offered first. */
  async function listSources() {
    const select = $("room-us-source");
    if (!select || !navigator.mediaDevices.enumerateDevices) return;
    const devices = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "videoinput");
    const camera = R.camera ? R.camera.getSettings().deviceId : null;
    const kept = select.value;
    select.replaceChildren(...devices.map((d, i) => new Option(d.label || `视频源 Video source ${i + 1}`, d.deviceId)));
    const guess = devices.find((d) => CAPTURE.test(d.label)) || devices.find((d) => d.deviceId !== camera) || devices[0];
    select.value = devices.some((d) => d.deviceId === kept) ? kept : (guess ? guess.deviceId : "");
    $("room-us-share").disabled = !devices.length && !R.ultrasound;
  }

  async function shareUltrasound() {
    if (R.ultrasound) { stopUltrasound(); return; }
    const id = $("room-us-source").value;
    let stream;
    try {
      // The device's own format: resizeMode "none", else Chromium crops and scales the frame to
      // the size asked (a 1024x768 card asked for 1280x720 came as 1024x720, its top and bottom cut).
      stream = await navigator.mediaDevices.getUserMedia({ audio: false, video: {
        deviceId: id ? { exact: id } : undefined, resizeMode: "none",
        width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } } });
    } catch (err) {
      status(`超声源无法打开 Cannot open the ultrasound source: ${err.name}`);
      return;
    }
    const track = stream.getVideoTracks()[0];
    // "detail": Chromium encodes it as screen content, keeping every line (no scaling down
    // under load) and leaving out its denoiser, which would smooth the speckle away.
    track.contentHint = "detail";
    track.onended = stopUltrasound; // the card unplugged
    R.ultrasound = track;
    $("room-us-self").srcObject = new MediaStream([track]);
    $("room-us-self-tile").hidden = false;
    if (R.usTx && R.mode !== "audio") await R.usTx.sender.replaceTrack(track);
    await tuneUltrasound();
    send({ type: "ultrasound", on: true });
    $("room-us-share").setAttribute("aria-pressed", "true");
  }

  function stopUltrasound() {
    const track = R.ultrasound;
    R.ultrasound = null; R.usOut = null;
    if (track) track.stop();
    if (R.usTx) R.usTx.sender.replaceTrack(null).catch(() => {});
    $("room-us-self").srcObject = null;
    $("room-us-self-tile").hidden = true;
    send({ type: "ultrasound", on: false });
    $("room-us-share").setAttribute("aria-pressed", "false");
  }

  /** Keep every line and give way on frame rate (a loaded or slow sender otherwise scales
   *  down, which blurs anatomy); in low-bandwidth mode send 480 lines at 15 fps, 500 kbps. */
  async function tuneUltrasound() {
    const sender = R.usTx && R.usTx.sender;
    if (!sender || !sender.track) return;
    const params = sender.getParameters();
    if (!params.encodings || !params.encodings.length) params.encodings = [{}];
    const height = sender.track.getSettings().height || US_LOW.lines;
    Object.assign(params.encodings[0], R.mode === "low"
      ? { maxBitrate: US_LOW.maxBitrate, maxFramerate: US_LOW.maxFramerate,
          scaleResolutionDownBy: Math.max(1, height / US_LOW.lines) }
      : { maxBitrate: undefined, maxFramerate: undefined, scaleResolutionDownBy: 1 });
    params.degradationPreference = "maintain-resolution";
    try { await sender.setParameters(params); } catch (err) { console.warn("room ultrasound parameters", err); }
  }

  /** Someone's ultrasound goes large over the shared view (a button switches back to it). */
  function showUltrasound() {
    const slot = R.slots.find((s) => s.participant && s.source === "ultrasound");
    const mid = slot && R.pc && R.mode !== "audio" ? slot.video_mid : "";
    const stage = $("room-us-stage"), video = $("room-us-video");
    if (stage.dataset.mid !== mid) {
      stage.dataset.mid = mid;
      const transceiver = mid ? R.pc.getTransceivers().find((t) => t.mid === mid) : null;
      video.srcObject = transceiver ? new MediaStream([transceiver.receiver.track]) : null;
      R.usIn = null;
      $("room-us-caption").textContent = "超声 Ultrasound";
      if (mid) R.usShown = true; // a newly shared ultrasound comes to the front
    }
    stage.hidden = !mid || !R.usShown;
    $("room-us-show").hidden = !mid || R.usShown;
  }

  /** Once a second: the size, frame rate and bitrate measured where the ultrasound arrives
   *  (the caption) and, on the presenter's page, where it leaves. */
  async function measureUltrasound() {
    if (!R.pc) return;
    const mid = $("room-us-stage").dataset.mid;
    if (mid) {
      const report = await R.pc.getStats();
      const s = [...report.values()].find((v) => v.type === "inbound-rtp" && v.kind === "video" && v.mid === mid);
      if (s) {
        R.usIn = rates(s, R.usIn);
        $("room-us-caption").textContent = caption(R.usIn) + (R.mode === "low" ? " · 弱网 Low" : "");
      }
    }
    if (R.ultrasound && R.usTx) {
      const report = await R.usTx.sender.getStats();
      const s = [...report.values()].find((v) => v.type === "outbound-rtp");
      if (s) {
        R.usOut = rates(s, R.usOut);
        $("room-us-self-caption").textContent = `${caption(R.usOut)} ↑`;
      }
    }
  }

  function rates(s, before) {
    const bytes = s.bytesReceived ?? s.bytesSent ?? 0;
    const seconds = before ? (s.timestamp - before.timestamp) / 1000 : 0;
    return { timestamp: s.timestamp, width: s.frameWidth || 0, height: s.frameHeight || 0,
      fps: s.framesPerSecond || 0, bytes, kbps: seconds > 0 ? Math.round((bytes - before.bytes) * 8 / seconds / 1000) : null,
      frames: s.framesDecoded ?? s.framesEncoded ?? 0, keyFrames: s.keyFramesDecoded ?? s.keyFramesEncoded ?? 0,
      freezes: s.freezeCount || 0,
      frozenSeconds: s.totalFreezesDuration || 0, limitation: s.qualityLimitationReason || null };
  }

  function caption(m) {
    return m.width ? `超声 Ultrasound ${m.width}×${m.height} · ${Math.round(m.fps)} fps` : "超声 Ultrasound";
  }

  // ---- shared view, lead, chat ---------------------------------------------------------

  function onRoomMessage(message) {
    switch (message.type) {
      case "state":
        R.lead = message.lead; showParticipants(R.participants);
        $("room-chat-log").replaceChildren();
        (message.chat || []).forEach(showChat);
        if (message.view && R.lead !== me) follow(message);
        break;
      case "view": if (R.lead !== me) follow(message); break;
      case "shown": R.shown[message.from] = message; showFollowers(); break;
      case "pointer": showPointer(message); break;
      case "lead": R.lead = message.lead; R.shown = {}; showFollowers(); showParticipants(R.participants); break;
      case "chat": showChat(message); break;
      case "error": console.warn("room", message); break;
      default: break;
    }
  }

  /** Apply the lead's state; while one apply runs, only the newest waiting state is kept. */
  async function follow(message) {
    R.pending = message;
    if (R.applying || !R.viewer) return;
    R.applying = true;
    try {
      while (R.pending) {
        const next = R.pending; R.pending = null;
        try {
          await R.viewer.apply(next.view || next.state);
          R.seq = next.seq;
          reportShown();
          R.applied.push({ seq: next.seq, t: next.t, rendered: Date.now() });
          if (R.applied.length > 1000) R.applied.shift();
        } catch (err) { console.warn("room apply", err); }
      }
    } finally { R.applying = false; }
  }

  /** A follower tells the lead what its viewer shows (once per change): loading, or the slice. */
  function reportShown() {
    if (!R.viewer || R.lead === me) return;
    const st = R.viewer.state();
    const label = st.loading ? `加载中 Loading Im ${st.target + 1}/${st.count}` : `Im ${st.index + 1}/${st.count}`;
    if (label === R.lastShown) return;
    R.lastShown = label;
    say({ type: "shown", seq: R.seq ?? null, loading: !!st.loading, label });
  }

  /** The lead sees, per follower, whether they see the same image yet. */
  function showFollowers() {
    const box = $("room-followers");
    if (!box) return;
    const parts = Object.values(R.shown).map((s) => `${s.name || s.from} ${s.loading ? "⏳" : "✓"} ${s.label}`);
    box.textContent = R.lead === me && parts.length ? `对方看到 They see: ${parts.join(" · ")}` : "";
  }

  function showPointer(message) {
    if (!R.viewer || !R.frameDoc) return;
    let dot = R.frameDoc.getElementById("room-pointer");
    if (!dot) {
      dot = R.frameDoc.createElement("div");
      dot.id = "room-pointer";
      dot.style.cssText = "position:fixed;width:14px;height:14px;margin:-7px 0 0 -7px;border-radius:50%;" +
        "border:2px solid #ff0;pointer-events:none;z-index:10";
      R.frameDoc.body.append(dot);
    }
    const at = R.viewer.imageToClient(message.x, message.y);
    dot.style.left = `${at.x}px`; dot.style.top = `${at.y}px`;
  }

  function showChat(message) {
    const item = document.createElement("li");
    const time = new Date(message.at).toLocaleTimeString("zh-CN", { hour: "2-digit", minute: "2-digit", timeZone: localZone() });
    item.textContent = `${time} ${message.name}: ${message.text}`;
    $("room-chat-log").append(item);
    item.scrollIntoView({ block: "nearest" });
  }

  function bindViewer() {
    const frame = $("room-frame");
    const attach = () => {
      const doc = frame.contentDocument;
      if (!doc || !frame.contentWindow.lancangViewer) { setTimeout(attach, 100); return; }
      R.frameDoc = doc;
      R.viewer = frame.contentWindow.lancangViewer;
      for (const selector of ["header.top", "footer"]) { const el = doc.querySelector(selector); if (el) el.hidden = true; }
      doc.addEventListener("viewer:statechange", (event) => {
        if (R.lead === me) say({ type: "view", state: event.detail, t: Date.now() });
        else reportShown();
      });
      doc.addEventListener("viewer:rendered", reportShown);  // e.g. the followed slice has now arrived
      let last = 0;
      doc.addEventListener("pointermove", (event) => {
        const now = performance.now();
        if (R.lead !== me || now - last < 50) return;
        last = now;
        const p = R.viewer.clientToImage(event.clientX, event.clientY);
        say({ type: "pointer", x: Math.round(p.x * 10) / 10, y: Math.round(p.y * 10) / 10 });
      });
      if (R.pending) follow(R.pending);
    };
    frame.addEventListener("load", attach);
    attach();
  }

  // ---- start ---------------------------------------------------------------------------

  async function main() {
    bindViewer();
    R.local = await openDevices();
    R.camera = R.local.getVideoTracks()[0] || null;
    R.mic = R.local.getAudioTracks()[0] || null;
    $("room-self").srcObject = R.local;
    $("room-mic").onclick = () => toggleTrack(R.mic, $("room-mic"));
    $("room-cam").onclick = () => toggleTrack(R.camera, $("room-cam"));
    $("room-screen").onclick = toggleScreen;
    if ($("room-us-share") && navigator.mediaDevices) { // none on a page that is not https
      $("room-us-share").onclick = shareUltrasound;
      navigator.mediaDevices.addEventListener("devicechange", () => listSources().catch(() => {})); // plugged in later
      listSources().catch((err) => console.warn("room sources", err));
    }
    $("room-us-hide").onclick = () => { R.usShown = false; showUltrasound(); };
    $("room-us-show").onclick = () => { R.usShown = true; showUltrasound(); };
    setInterval(() => measureUltrasound().catch((err) => console.warn("room stats", err)), 1000);
    $("room-mode").onchange = (event) => setMode(event.target.value);
    $("room-consent").onchange = (event) => send({ type: "consent", given: event.target.checked });
    $("room-record").onclick = () => send({ type: "record", on: $("room-record").getAttribute("aria-pressed") !== "true" });
    $("room-hand-over").onclick = () => { const to = $("room-lead-to").value; if (to) say({ type: "lead", to }); };
    $("room-chat-form").onsubmit = (event) => {
      event.preventDefault();
      const text = $("room-chat-text").value.trim();
      if (text) say({ type: "chat", text });
      $("room-chat-text").value = "";
    };
    window.addEventListener("pagehide", () => { R.closed = true; hangUp(); if (R.ws) R.ws.close(); });
    connect();
  }

  // For tests and the benchmark: what this page decodes and follows.
  window.lancangRoom = {
    get lead() { return R.lead; },
    get slots() { return R.slots; },
    get applied() { return R.applied; },
    get mode() { return R.mode; },
    setMode,
    say,
    frames: () => ({ ...R.frames }),
    /** The ultrasound as measured where it arrives (stage) and where it leaves (presenter). */
    ultrasound: () => ({ received: R.usIn, sent: R.usOut, caption: $("room-us-caption").textContent }),
    /** Mean RGB of what this page shows of `who` (its <video>), or null. */
    sample(who) {
      const tile = document.querySelector(`#room-videos [data-participant="${who}"] video`);
      if (!tile || !tile.videoWidth) return null;
      const canvas = document.createElement("canvas");
      canvas.width = 32; canvas.height = 24;
      const c = canvas.getContext("2d");
      c.drawImage(tile, 0, 0, 32, 24);
      const data = c.getImageData(0, 0, 32, 24).data;
      const sum = [0, 0, 0];
      for (let i = 0; i < data.length; i += 4) { sum[0] += data[i]; sum[1] += data[i + 1]; sum[2] += data[i + 2]; }
      const n = data.length / 4;
      return { rgb: sum.map((v) => v / n), width: tile.videoWidth, height: tile.videoHeight };
    },
    /** The media path: its UDP ports (this page's, the server's) and bytes each way so far. */
    async mediaPath() {
      if (!R.pc) return null;
      const report = [...(await R.pc.getStats()).values()];
      const transport = report.find((s) => s.type === "transport" && s.selectedCandidatePairId);
      const pair = transport && report.find((s) => s.id === transport.selectedCandidatePairId);
      if (!pair) return null;
      const port = (id) => (report.find((s) => s.id === id) || {}).port;
      return { local: port(pair.localCandidateId), remote: port(pair.remoteCandidateId), timestamp: pair.timestamp,
               bytesReceived: pair.bytesReceived || 0, bytesSent: pair.bytesSent || 0 };
    },
    async inboundStats() {
      if (!R.pc) return [];
      const report = await R.pc.getStats();
      return [...report.values()].filter((s) => s.type === "inbound-rtp" && s.kind === "video")
        .map((s) => ({ mid: s.mid, framesDecoded: s.framesDecoded || 0, width: s.frameWidth, height: s.frameHeight }));
    },
  };

  main().catch((err) => { console.error("room", err); status("出错 Error: " + err.message); });
})();

/** The deployment's zone for times on the page (LANCANG_TIMEZONE, in base.html's meta). */
function localZone() {
  const meta = document.querySelector('meta[name="lancang-timezone"]');
  return (meta && meta.content) || "Asia/Shanghai";
}
