// Merchant scanner: reads Stadjerspas pass token QR codes from the device camera.
//
//   const scanner = await StadjerspasScanner.startScanner({
//     video,                      // a <video> element (the camera preview)
//     onCode(text) { ... },       // a "stadjerspas:1:..." token URI, once per distinct code
//     onError(err) { ... },       // {code, message, fatal}: see ERROR_CODES
//     onStatus(status) { ... },   // {state, message}: text for an aria-live region
//   });
//   StadjerspasScanner.stopScanner();  // or scanner.stop(): releases the camera
//
// Frames are drawn to an off-screen canvas every `intervalMs` (100 ms) and decoded with jsQR.
// A code is reported once while it stays in view: the same text is reported again only after it
// has been out of view for `debounceMs` (3 s), so holding a pass in front of the camera never
// triggers a second redemption. Texts that are not pass tokens are refused with
// {code: "not_a_pass_token"} (debounced the same way) and scanning goes on.
//
// Camera failures (no camera, permission denied, camera in use, insecure page) are reported
// once through onError with `fatal: true`; the page should then offer manual code entry (a pass
// token URI, or the holder's short code: the server tells them apart). The same text also comes
// as onStatus({state: "error"}), for pages without an error area: a page that shows onError's
// message should not show that status text again (the merchant page leaves it out).
// startScanner() resolves in every case (to a handle whose `active` says whether the camera
// runs); it never rejects for camera problems.

import jsQR from "jsqr";

export const TOKEN_PREFIX = "stadjerspas:1:";

/** Stable error codes passed to onError (the page maps them to localised text). */
export const ERROR_CODES = Object.freeze({
  NOT_A_PASS_TOKEN: "not_a_pass_token",
  NO_CAMERA: "no_camera",
  PERMISSION_DENIED: "permission_denied",
  CAMERA_IN_USE: "camera_in_use",
  INSECURE_CONTEXT: "insecure_context",
  CAMERA_LOST: "camera_lost",
  CAMERA_ERROR: "camera_error",
});

/** Default (English) texts; pass `messages` to startScanner to localise. */
export const DEFAULT_MESSAGES = Object.freeze({
  starting: "Starting the camera…",
  scanning: "Camera on. Hold the pass QR code in front of the camera.",
  found: "Pass code read.",
  stopped: "Camera off.",
  not_a_pass_token: "This QR code is not a Stadjerspas pass. Scan the pass QR code.",
  no_camera: "No camera found. Type the pass code instead.",
  permission_denied: "Camera access was refused. Allow the camera, or type the pass code instead.",
  camera_in_use: "The camera is in use by another app. Close it, or type the pass code instead.",
  insecure_context: "The camera only works on a secure (https) page. Type the pass code instead.",
  camera_lost: "The camera stopped. Type the pass code instead, or start the camera again.",
  camera_error: "The camera could not be started. Type the pass code instead.",
});

const DEFAULTS = Object.freeze({
  intervalMs: 100,
  debounceMs: 3000,
  // Frames are scaled down to at most this many pixels on the long side before decoding:
  // a version-11 token QR (69 modules with quiet zone) still gets >= 3 px per module when it
  // fills a third of the frame, and jsQR stays fast on low-end phones.
  maxDecodeSide: 960,
  // Pass QR codes are always dark on light; "attemptBoth" also reads inverted codes at twice
  // the cost per frame.
  inversionAttempts: "dontInvert",
  facingMode: "environment",
});

let current = null;

/** True when `text` looks like a pass token URI (the server verifies it fully). */
export function isPassToken(text) {
  return typeof text === "string" && text.startsWith(TOKEN_PREFIX);
}

/** Map a getUserMedia failure to one of ERROR_CODES. */
export function cameraErrorCode(error) {
  switch (error && error.name) {
    case "NotFoundError":
    case "DevicesNotFoundError":
    case "OverconstrainedError":
    case "ConstraintNotSatisfiedError":
      return ERROR_CODES.NO_CAMERA;
    case "NotAllowedError":
    case "PermissionDeniedError":
    case "SecurityError":
      return ERROR_CODES.PERMISSION_DENIED;
    case "NotReadableError":
    case "TrackStartError":
    case "AbortError":
      return ERROR_CODES.CAMERA_IN_USE;
    default:
      return ERROR_CODES.CAMERA_ERROR;
  }
}

function noop() {}

class Session {
  constructor(options) {
    if (!options || !options.video) {
      throw new TypeError("startScanner: options.video (a <video> element) is required");
    }
    this.video = options.video;
    this.onCode = options.onCode || noop;
    this.onError = options.onError || noop;
    this.onStatus = options.onStatus || noop;
    this.messages = Object.assign({}, DEFAULT_MESSAGES, options.messages || {});
    this.intervalMs = options.intervalMs ?? DEFAULTS.intervalMs;
    this.debounceMs = options.debounceMs ?? DEFAULTS.debounceMs;
    this.maxDecodeSide = options.maxDecodeSide ?? DEFAULTS.maxDecodeSide;
    this.inversionAttempts = options.inversionAttempts ?? DEFAULTS.inversionAttempts;
    this.facingMode = options.facingMode ?? DEFAULTS.facingMode;
    this.stream = null;
    this.timer = null;
    this.stopped = false;
    this.canvas = null;
    this.context = null;
    // text -> time it was last seen (ms); drives the debounce for codes and refusals alike
    this.lastSeen = new Map();
  }

  status(state, message) {
    this.safeCall(this.onStatus, { state, message: message ?? this.messages[state] ?? "" });
  }

  error(code, fatal, detail) {
    const err = { code, message: this.messages[code] ?? code, fatal };
    if (detail !== undefined) err.detail = detail;
    this.safeCall(this.onError, err);
    if (fatal) this.status("error", err.message);
  }

  safeCall(callback, value) {
    try {
      callback(value);
    } catch (exc) {
      // A failing page callback must not stop the scanner.
      setTimeout(() => {
        throw exc;
      });
    }
  }

  async start() {
    this.status("starting");
    const media = typeof navigator !== "undefined" ? navigator.mediaDevices : undefined;
    if (!media || typeof media.getUserMedia !== "function") {
      // Browsers hide navigator.mediaDevices on pages that are not a secure context.
      const insecure = typeof window !== "undefined" && window.isSecureContext === false;
      this.fail(insecure ? ERROR_CODES.INSECURE_CONTEXT : ERROR_CODES.NO_CAMERA);
      return false;
    }
    let stream;
    try {
      stream = await media.getUserMedia({
        audio: false,
        video: {
          facingMode: this.facingMode,
          width: { ideal: 1280 },
          height: { ideal: 720 },
        },
      });
    } catch (exc) {
      if (!this.stopped) this.fail(cameraErrorCode(exc), exc && `${exc.name}: ${exc.message}`);
      return false;
    }
    if (this.stopped) {
      // stopScanner() was called while the permission prompt was open.
      stream.getTracks().forEach((track) => track.stop());
      return false;
    }
    this.stream = stream;
    for (const track of stream.getVideoTracks()) {
      track.addEventListener("ended", () => {
        if (!this.stopped) {
          this.release();
          this.fail(ERROR_CODES.CAMERA_LOST);
        }
      });
    }
    const video = this.video;
    video.setAttribute("playsinline", "");
    video.setAttribute("autoplay", "");
    video.muted = true;
    video.srcObject = stream;
    try {
      await video.play();
    } catch (exc) {
      // play() may be interrupted (e.g. by stop()); frames still arrive for a muted stream.
      if (this.stopped) return false;
    }
    if (this.stopped) return false;
    this.canvas = document.createElement("canvas");
    this.context = this.canvas.getContext("2d", { willReadFrequently: true });
    this.status("scanning");
    this.schedule();
    return true;
  }

  fail(code, detail) {
    this.stopped = true;
    this.release();
    this.error(code, true, detail);
  }

  schedule() {
    if (!this.stopped) this.timer = setTimeout(() => this.tick(), this.intervalMs);
  }

  tick() {
    this.timer = null;
    if (this.stopped) return;
    try {
      this.scanFrame();
    } finally {
      this.schedule();
    }
  }

  scanFrame() {
    const video = this.video;
    const width = video.videoWidth;
    const height = video.videoHeight;
    if (!width || !height || video.readyState < 2) return; // no frame yet
    const scale = Math.min(1, this.maxDecodeSide / Math.max(width, height));
    const w = Math.max(1, Math.round(width * scale));
    const h = Math.max(1, Math.round(height * scale));
    if (this.canvas.width !== w || this.canvas.height !== h) {
      this.canvas.width = w;
      this.canvas.height = h;
    }
    this.context.drawImage(video, 0, 0, w, h);
    const image = this.context.getImageData(0, 0, w, h);
    const result = jsQR(image.data, w, h, { inversionAttempts: this.inversionAttempts });
    if (result && typeof result.data === "string" && result.data !== "") {
      this.seen(result.data);
    }
  }

  seen(text) {
    const now = Date.now();
    const last = this.lastSeen.get(text);
    this.lastSeen.set(text, now);
    if (last !== undefined && now - last < this.debounceMs) return;
    for (const [other, time] of this.lastSeen) {
      if (now - time >= this.debounceMs) this.lastSeen.delete(other);
    }
    if (isPassToken(text)) {
      this.status("found");
      this.safeCall(this.onCode, text);
    } else {
      this.error(ERROR_CODES.NOT_A_PASS_TOKEN, false);
    }
  }

  release() {
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    if (this.stream) {
      this.stream.getTracks().forEach((track) => track.stop());
      this.stream = null;
    }
    if (this.video && this.video.srcObject) {
      this.video.pause();
      this.video.srcObject = null;
    }
  }

  stop() {
    const wasRunning = !this.stopped;
    this.stopped = true;
    this.release();
    if (wasRunning) this.status("stopped");
  }
}

/**
 * Open the (rear) camera on `options.video` and scan for pass token QR codes.
 *
 * Options: video (required), onCode(text), onError({code, message, fatal, detail?}),
 * onStatus({state, message}) with state one of starting | scanning | found | stopped | error,
 * messages (overrides DEFAULT_MESSAGES), intervalMs, debounceMs, maxDecodeSide,
 * inversionAttempts, facingMode.
 *
 * A scanner that is already running is stopped first. Resolves to a handle
 * {active, stop()}; `active` is false when the camera could not be started (onError was called).
 */
export async function startScanner(options) {
  stopScanner();
  const session = new Session(options);
  current = session;
  const handle = {
    get active() {
      return !session.stopped;
    },
    stop() {
      session.stop();
      if (current === session) current = null;
    },
  };
  await session.start();
  return handle;
}

/** Stop the running scanner (if any) and release the camera. */
export function stopScanner() {
  if (current) {
    const session = current;
    current = null;
    session.stop();
  }
}
