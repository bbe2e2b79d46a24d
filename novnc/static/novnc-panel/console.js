// The panel's console page: noVNC's RFB client on a websocket to the panel's own proxy.
//
// noVNC (npm @novnc/novnc) is served by collectstatic under static/novnc/; this module sits in
// static/novnc-panel/, so the relative imports below resolve to it wherever STATIC_URL points.
// The proxy performs the VNC authentication itself: the browser sees security type None and
// never holds the password. Tokens are one-time and short-lived, so the page connects at once
// and a reconnect loads the page again (which issues a new token).

import RFB from "../novnc/core/rfb.js";
import keysymdef from "../novnc/core/input/keysymdef.js";

const XK_Return = 0xff0d;
const XK_Tab = 0xff09;
const XK_Shift_L = 0xffe1;
// Characters typed with Shift on a US keyboard. QEMU turns a keysym into the scan code of
// its key but does not press Shift for it, so the paste box holds Shift itself.
const US_SHIFTED = new Set('~!@#$%^&*()_+{}|:"<>?');
const TYPE_DELAY_MS = 8;  // between characters: the guest's keyboard buffer is small

const root = document.getElementById("console");
const screen = document.getElementById("console-screen");
const stateEl = document.getElementById("console-state");
const messageEl = document.getElementById("console-message");
const scaleBox = document.getElementById("console-scale");
const fullscreenBtn = document.getElementById("console-fullscreen");
const cadBtn = document.getElementById("console-cad");
const reconnectBtn = document.getElementById("console-reconnect");
const pasteText = document.getElementById("paste-text");
const pasteBtn = document.getElementById("paste-send");
const pasteProgress = document.getElementById("paste-progress");

const texts = {};
for (const dd of document.querySelectorAll("#console-i18n dd[data-key]")) {
    texts[dd.dataset.key] = dd.textContent.trim();
}

const byToken = root.dataset.byToken === "1";
const reconnectUrl = root.dataset.reconnect || "";
const SCALE_KEY = "panel.console.scale";

let rfb = null;
let closeEvent = null;   // the websocket's close event: its code says why
let connected = false;
let ever = false;        // connected at least once
let typing = false;

function setState(state) {
    stateEl.dataset.state = state;
    stateEl.textContent = texts[state] || state;
    const up = state === "connected";
    cadBtn.disabled = !up;
    pasteBtn.disabled = !up || typing;
    fullscreenBtn.disabled = !up && !document.fullscreenElement;
    root.classList.toggle("is-connected", up);
    root.classList.toggle("is-disconnected", state === "disconnected");
}

function showMessage(text, kind) {
    messageEl.textContent = text;
    messageEl.className = "alert " + (kind === "error" ? "alert-error" : "alert-warning");
    messageEl.hidden = !text;
}

function wsUrl(path) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + location.host + path;
}

function reasonFor(code, clean) {
    switch (code) {
        case 4401: return byToken ? texts["4401token"] : texts["4401"];
        case 4403: return texts["4403"];
        case 4404: return texts["4404"];
        case 4502: return texts["4502"];
        default:
            if (!ever) { return texts.failed; }
            return clean ? texts.closed : texts.lost;
    }
}

function finish(clean, securityFailure) {
    connected = false;
    setState("disconnected");
    const code = closeEvent ? closeEvent.code : 0;
    let text = securityFailure && !(code >= 4000) ? texts.security : reasonFor(code, clean);
    const final = code === 4404;
    if (reconnectUrl && !final) {
        reconnectBtn.hidden = false;
        reconnectBtn.focus();
    } else if (!reconnectUrl && !final && code !== 4401) {
        text += " " + texts.newLink;
    }
    showMessage(text, code === 4401 || code === 4403 || code === 4404 || !ever ? "error" : "warning");
    if (document.fullscreenElement) {
        document.exitFullscreen().catch(() => {});
    }
}

function connect() {
    setState("connecting");
    showMessage("");
    let socket;
    try {
        socket = new WebSocket(wsUrl(root.dataset.wsPath), ["binary"]);
    } catch (err) {
        finish(false, false);
        return;
    }
    // Listen before noVNC takes the socket over: this listener then runs before its own.
    socket.addEventListener("close", (event) => { closeEvent = event; });

    let securityFailure = false;
    rfb = new RFB(screen, socket, { shared: true });
    rfb.scaleViewport = scaleBox.checked;
    rfb.background = "#000";

    rfb.addEventListener("connect", () => {
        connected = ever = true;
        setState("connected");
        rfb.focus();
    });
    rfb.addEventListener("disconnect", (event) => {
        const clean = !!(event.detail && event.detail.clean);
        // noVNC may report a failure before the socket has closed; its close code is wanted.
        if (socket.readyState === WebSocket.CLOSED) {
            finish(clean, securityFailure);
            return;
        }
        let done = false;
        const once = () => { if (!done) { done = true; finish(clean, securityFailure); } };
        socket.addEventListener("close", () => setTimeout(once, 0));
        setTimeout(once, 1500);
    });
    rfb.addEventListener("securityfailure", () => { securityFailure = true; });
    // The proxy authenticates to the VNC server itself: a password request means something is
    // wrong on the way; never ask the user for one.
    rfb.addEventListener("credentialsrequired", () => {
        securityFailure = true;
        rfb.disconnect();
    });
}

// -- screen scaling -------------------------------------------------------------------------
try {
    const saved = localStorage.getItem(SCALE_KEY);
    if (saved !== null) { scaleBox.checked = saved === "1"; }
} catch (err) { /* storage may be unavailable */ }
root.classList.toggle("is-scaled", scaleBox.checked);
scaleBox.addEventListener("change", () => {
    root.classList.toggle("is-scaled", scaleBox.checked);
    if (rfb) { rfb.scaleViewport = scaleBox.checked; }
    try { localStorage.setItem(SCALE_KEY, scaleBox.checked ? "1" : "0"); } catch (err) { /* ignore */ }
    if (rfb && connected) { rfb.focus(); }
});

// -- full screen ----------------------------------------------------------------------------
function updateFullscreenButton() {
    const on = document.fullscreenElement === root;
    fullscreenBtn.textContent = on ? texts.exitFullscreen : texts.fullscreen;
    fullscreenBtn.setAttribute("aria-pressed", on ? "true" : "false");
    root.classList.toggle("is-fullscreen", on);
}
if (!document.fullscreenEnabled) {
    fullscreenBtn.hidden = true;
}
fullscreenBtn.addEventListener("click", () => {
    if (document.fullscreenElement) {
        document.exitFullscreen().catch(() => {});
    } else {
        root.requestFullscreen().then(() => { if (rfb && connected) { rfb.focus(); } }).catch(() => {});
    }
});
document.addEventListener("fullscreenchange", updateFullscreenButton);

// -- Ctrl-Alt-Del ---------------------------------------------------------------------------
cadBtn.addEventListener("click", () => {
    if (rfb && connected) {
        rfb.sendCtrlAltDel();
        rfb.focus();
    }
});

// -- reconnect ------------------------------------------------------------------------------
reconnectBtn.addEventListener("click", () => {
    // A token is good for one connection: the console URL of the server issues a new one.
    if (reconnectUrl) { location.assign(reconnectUrl); }
});

// -- paste as keystrokes --------------------------------------------------------------------
function keysymFor(ch) {
    if (ch === "\n") { return XK_Return; }
    if (ch === "\t") { return XK_Tab; }
    const cp = ch.codePointAt(0);
    if (cp >= 0x20 && cp <= 0x7e) { return cp; }  // ASCII printable: the keysym is the code point
    if (cp < 0x20 || cp === 0x7f) { return 0; }   // other control characters are not typed
    return keysymdef.lookup(cp);
}

function needsShift(ch) {
    return (ch >= "A" && ch <= "Z") || US_SHIFTED.has(ch);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function typeText(text) {
    const chars = Array.from(text.replace(/\r\n?/g, "\n"));
    typing = true;
    pasteBtn.disabled = true;
    try {
        for (let i = 0; i < chars.length; i++) {
            if (!connected) { break; }
            const ch = chars[i];
            const keysym = keysymFor(ch);
            if (!keysym) { continue; }
            const shift = needsShift(ch);
            if (shift) { rfb.sendKey(XK_Shift_L, "ShiftLeft", true); }
            rfb.sendKey(keysym, null);  // down and up
            if (shift) { rfb.sendKey(XK_Shift_L, "ShiftLeft", false); }
            if (i % 20 === 0) { pasteProgress.textContent = texts.typing + " " + (i + 1) + " / " + chars.length; }
            await sleep(TYPE_DELAY_MS);
        }
    } finally {
        typing = false;
        pasteProgress.textContent = "";
        pasteBtn.disabled = !connected;
        if (connected) { rfb.focus(); }
    }
}

pasteBtn.addEventListener("click", () => {
    if (!rfb || !connected || typing || !pasteText.value) { return; }
    typeText(pasteText.value);
});

// Expose the client for debugging from the browser's console.
window.panelConsole = {
    get rfb() { return rfb; },
    get closeCode() { return closeEvent ? closeEvent.code : null; },
};

updateFullscreenButton();
connect();
