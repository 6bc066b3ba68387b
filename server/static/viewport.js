// CheXtriev image viewports: window/level, zoom, pan, invert and overlays on a <canvas>.
// Plain JavaScript, no build step. `Viewport` draws one image; `ViewerGroup` links several
// (zoom and pan, window) and routes the mouse to them. app.js wires them to the page.
"use strict";

(function (global) {
  // Window presets. `range`: the window spans these quantiles of the image's own grey levels
  // (extreme bins 0 and 255 left out: background, collimation, burnt-in labels), so a preset
  // means the same part of the anatomy whatever the source's intensity scaling.
  // `default` shows the image as stored (window 256, level 128).
  const PRESETS = {
    default: { label: "Default", range: null },
    lung: { label: "Lung", range: [0.01, 0.6] },
    mediastinum: { label: "Mediastinum", range: [0.35, 0.99] },
    bone: { label: "Bone", range: [0.65, 0.999] },
  };
  const ZOOM_MIN = 0.5;
  const ZOOM_MAX = 16;
  const WINDOW_PER_PIXEL = 1.0; // grey levels per CSS pixel dragged
  const WHEEL_SPEED = 0.0015; // zoom factor exp(-deltaY * WHEEL_SPEED)
  const KEY_PAN = 0.05; // of the image per arrow press, at zoom 1
  const BOX_COLOUR = "rgba(79, 163, 255, 0.9)";
  const MATCH_COLOUR = "#ffd166";

  const clamp = (value, low, high) => Math.min(high, Math.max(low, value));

  class Viewport {
    /**
     * @param {HTMLCanvasElement} canvas
     * @param {{title: string, wlReadout: HTMLElement, zoomReadout: HTMLElement}} options
     */
    constructor(canvas, { title, wlReadout, zoomReadout }) {
      this.canvas = canvas;
      this.title = title;
      this.wlReadout = wlReadout;
      this.zoomReadout = zoomReadout;
      this.group = null;
      this.image = null; // {width, height} of the drawn rendition
      this.original = null; // {width, height} of the original image (box coordinates)
      this.grey = null; // Uint8ClampedArray (width * height) grey levels of the rendition
      this.cdf = null; // Float64Array(256) cumulative share of grey levels 1..254
      this.windowed = null; // canvas holding the windowed rendition
      this.pixels = null; // its ImageData
      this.window = { width: 256, center: 128, preset: "default" };
      this.invert = false;
      this.view = { zoom: 1, cx: 0.5, cy: 0.5 };
      this.heat = null; // image drawn over it (transparent layer), or null
      this.heatLabel = "";
      this.heatOpacity = 1;
      this.boxes = []; // [{region, index, box: [x1, y1, x2, y2] | null}] in original pixels
      this.shownRegions = new Set();
      this.highlights = new Map(); // region index -> label (best-matching regions)
      this.frame = 0;
      this.windowDirty = false;
      new ResizeObserver(() => this.requestRender()).observe(canvas);
    }

    // ------------------------------------------------------------------ content
    /** Show `image` (a loaded HTMLImageElement); `original` is the original image's size. */
    setImage(image, original) {
      const width = image.naturalWidth, height = image.naturalHeight;
      const scratch = document.createElement("canvas");
      scratch.width = width; scratch.height = height;
      const context = scratch.getContext("2d", { willReadFrequently: true });
      context.drawImage(image, 0, 0);
      const rgba = context.getImageData(0, 0, width, height).data;
      const grey = new Uint8ClampedArray(width * height);
      const counts = new Float64Array(256);
      for (let i = 0, j = 0; i < grey.length; i += 1, j += 4) {
        const value = (rgba[j] * 77 + rgba[j + 1] * 150 + rgba[j + 2] * 29) >> 8;
        grey[i] = value;
        counts[value] += 1;
      }
      counts[0] = 0; counts[255] = 0;
      const total = counts.reduce((a, b) => a + b, 0) || 1;
      const cdf = new Float64Array(256);
      let running = 0;
      for (let v = 0; v < 256; v += 1) { running += counts[v]; cdf[v] = running / total; }
      this.grey = grey; this.cdf = cdf;
      this.image = { width, height };
      this.original = { width: (original && original.width) || width, height: (original && original.height) || height };
      this.windowed = scratch;
      this.windowContext = context;
      this.pixels = context.createImageData(width, height);
      this.pixels.data.fill(255);
      this.applyWindow();
    }

    clear() {
      this.image = null; this.grey = null; this.heat = null; this.boxes = [];
      this.requestRender();
    }

    get hasImage() { return this.image !== null; }

    setHeat(image, label) { this.heat = image; this.heatLabel = image ? label : ""; this.requestRender(); }
    setHeatOpacity(opacity) { this.heatOpacity = clamp(opacity, 0, 1); this.requestRender(); }
    setBoxes(boxes) { this.boxes = boxes || []; this.requestRender(); }
    setRegions(indices, highlights) {
      this.shownRegions = new Set(indices);
      this.highlights = highlights || new Map();
      this.requestRender();
    }

    // ------------------------------------------------------------------ window / level
    /** The grey level below which a share `q` of the image's pixels lie. */
    quantile(q) {
      if (!this.cdf) return q * 255;
      for (let v = 0; v < 256; v += 1) if (this.cdf[v] >= q) return v;
      return 255;
    }

    presetWindow(name) {
      const preset = PRESETS[name];
      if (!preset) throw new Error(`unknown window preset ${name}`);
      if (!preset.range) return { width: 256, center: 128, preset: name };
      const low = this.quantile(preset.range[0]), high = this.quantile(preset.range[1]);
      const width = Math.max(16, high - low);
      return { width, center: (low + high) / 2, preset: name };
    }

    setWindow({ width, center, preset = null }) {
      this.window = { width: clamp(width, 1, 512), center: clamp(center, -128, 383), preset };
      this.applyWindow();
    }

    setInvert(invert) { this.invert = Boolean(invert); this.applyWindow(); }

    /** Re-window on the next frame (several drags within one frame cost one pass). */
    applyWindow() {
      this.windowDirty = true;
      this.requestRender();
    }

    windowPixels() {
      this.windowDirty = false;
      if (this.grey) {
        const { width, center } = this.window;
        const low = center - width / 2;
        const lut = new Uint8ClampedArray(256);
        for (let v = 0; v < 256; v += 1) {
          const t = clamp((v - low) / width, 0, 1) * 255;
          lut[v] = this.invert ? 255 - t : t;
        }
        const data = this.pixels.data, grey = this.grey;
        for (let i = 0, j = 0; i < grey.length; i += 1, j += 4) {
          const value = lut[grey[i]];
          data[j] = value; data[j + 1] = value; data[j + 2] = value;
        }
        this.windowContext.putImageData(this.pixels, 0, 0);
      }
    }

    // ------------------------------------------------------------------ geometry
    cssSize() { return { width: this.canvas.clientWidth || 1, height: this.canvas.clientHeight || 1 }; }

    /** CSS pixels per rendition pixel at the current zoom. */
    scale() {
      if (!this.image) return 1;
      const { width, height } = this.cssSize();
      return Math.min(width / this.image.width, height / this.image.height) * 0.98 * this.view.zoom;
    }

    /** The rendition pixel under CSS point (x, y) of the canvas. */
    imagePoint(x, y) {
      const { width, height } = this.cssSize();
      const s = this.scale();
      return { x: this.view.cx * this.image.width + (x - width / 2) / s,
               y: this.view.cy * this.image.height + (y - height / 2) / s };
    }

    /** The view after zooming by `factor` with the point under CSS (x, y) kept in place. */
    zoomedView(factor, anchor) {
      const zoom = clamp(this.view.zoom * factor, ZOOM_MIN, ZOOM_MAX);
      if (!this.image) return { ...this.view, zoom };
      const { width, height } = this.cssSize();
      const at = anchor || { x: width / 2, y: height / 2 };
      const point = this.imagePoint(at.x, at.y);
      const s = this.scale() * (zoom / this.view.zoom);
      return { zoom,
               cx: clamp((point.x - (at.x - width / 2) / s) / this.image.width, 0, 1),
               cy: clamp((point.y - (at.y - height / 2) / s) / this.image.height, 0, 1) };
    }

    /** The view after moving the image by (dx, dy) CSS pixels. */
    pannedView(dx, dy) {
      if (!this.image) return { ...this.view };
      const s = this.scale();
      return { zoom: this.view.zoom,
               cx: clamp(this.view.cx - dx / (s * this.image.width), 0, 1),
               cy: clamp(this.view.cy - dy / (s * this.image.height), 0, 1) };
    }

    setView(view) { this.view = { ...view }; this.requestRender(); }

    // ------------------------------------------------------------------ drawing
    requestRender() {
      if (this.frame) return;
      this.frame = requestAnimationFrame(() => { this.frame = 0; this.render(); });
    }

    render() {
      const canvas = this.canvas, ratio = window.devicePixelRatio || 1;
      const { width: cssWidth, height: cssHeight } = this.cssSize();
      const width = Math.round(cssWidth * ratio), height = Math.round(cssHeight * ratio);
      if (canvas.width !== width || canvas.height !== height) { canvas.width = width; canvas.height = height; }
      const context = canvas.getContext("2d");
      context.setTransform(1, 0, 0, 1, 0, 0);
      context.fillStyle = "#000";
      context.fillRect(0, 0, width, height);
      this.updateReadouts();
      if (!this.image) return;
      if (this.windowDirty) this.windowPixels();
      const s = this.scale() * ratio;
      const ox = width / 2 - this.view.cx * this.image.width * s;
      const oy = height / 2 - this.view.cy * this.image.height * s;
      context.imageSmoothingEnabled = true;
      context.imageSmoothingQuality = "high";
      context.setTransform(s, 0, 0, s, ox, oy);
      context.drawImage(this.windowed, 0, 0);
      if (this.heat) {
        context.globalAlpha = this.heatOpacity;
        context.drawImage(this.heat, 0, 0, this.image.width, this.image.height);
        context.globalAlpha = 1;
      }
      context.setTransform(1, 0, 0, 1, 0, 0);
      this.drawBoxes(context, s, ox, oy, ratio);
    }

    drawBoxes(context, s, ox, oy, ratio) {
      const fx = this.image.width / this.original.width, fy = this.image.height / this.original.height;
      context.font = `600 ${Math.round(11 * ratio)}px system-ui, sans-serif`;
      context.textBaseline = "bottom";
      for (const item of this.boxes) {
        if (!item.box || !this.shownRegions.has(item.index)) continue;
        const [x1, y1, x2, y2] = item.box;
        const left = ox + x1 * fx * s, top = oy + y1 * fy * s;
        const boxWidth = (x2 - x1) * fx * s, boxHeight = (y2 - y1) * fy * s;
        const match = this.highlights.get(item.index);
        context.lineWidth = (match ? 2 : 1.25) * ratio;
        context.strokeStyle = match ? MATCH_COLOUR : BOX_COLOUR;
        context.strokeRect(left, top, boxWidth, boxHeight);
        const label = match || item.region;
        const padding = 3 * ratio, textHeight = 14 * ratio;
        const textWidth = context.measureText(label).width + 2 * padding;
        const labelTop = top - textHeight >= 0 ? top - textHeight : top;
        const labelLeft = Math.max(0, Math.min(left, context.canvas.width - textWidth)); // stays on screen
        context.fillStyle = "rgba(0, 0, 0, 0.72)";
        context.fillRect(labelLeft, labelTop, textWidth, textHeight);
        context.fillStyle = match ? MATCH_COLOUR : "#cfe3ff";
        context.fillText(label, labelLeft + padding, labelTop + textHeight - 2 * ratio);
      }
    }

    updateReadouts() {
      const { width, center, preset } = this.window;
      const canvas = this.canvas;
      if (!this.image) {
        this.wlReadout.textContent = ""; this.zoomReadout.textContent = "";
        canvas.dataset.loaded = "false";
        return;
      }
      const presetLabel = preset ? ` · ${PRESETS[preset].label}` : "";
      this.wlReadout.textContent = `W ${Math.round(width)}  L ${Math.round(center)}${presetLabel}${this.invert ? " · inverted" : ""}`;
      this.zoomReadout.textContent = `${this.view.zoom.toFixed(2)}×`;
      Object.assign(canvas.dataset, {
        loaded: "true", window: width.toFixed(1), level: center.toFixed(1), invert: String(this.invert),
        zoom: this.view.zoom.toFixed(3), cx: this.view.cx.toFixed(4), cy: this.view.cy.toFixed(4),
        heat: this.heatLabel, regions: String([...this.shownRegions].filter((i) => this.boxes[i] && this.boxes[i].box).length),
      });
      canvas.setAttribute("aria-label", `${this.title}: window ${Math.round(width)}, level ${Math.round(center)}`
        + `${this.invert ? ", inverted" : ""}, zoom ${this.view.zoom.toFixed(1)} times`
        + `${this.heatLabel ? `, heatmap of ${this.heatLabel}` : ""}`);
    }
  }

  /** Viewports that share zoom/pan (`linkView`) and window (`linkWindow`), and the mouse. */
  class ViewerGroup {
    constructor(viewports) {
      this.viewports = viewports;
      this.linkView = true;
      this.linkWindow = true;
      this.tool = "wl"; // what a plain left drag does: "wl" or "pan"
      this.active = viewports[0];
      this.listeners = [];
      for (const viewport of viewports) { viewport.group = this; this.attach(viewport); }
    }

    onChange(listener) { this.listeners.push(listener); }
    changed() { for (const listener of this.listeners) listener(); }

    viewTargets(source) { return this.linkView ? this.viewports : [source]; }
    windowTargets(source) { return this.linkWindow ? this.viewports : [source]; }

    setView(source, view) { for (const viewport of this.viewTargets(source)) viewport.setView(view); this.changed(); }
    zoomBy(source, factor, anchor) { this.setView(source, source.zoomedView(factor, anchor)); }
    panBy(source, dx, dy) { this.setView(source, source.pannedView(dx, dy)); }
    fit(source = this.active) { this.setView(source, { zoom: 1, cx: 0.5, cy: 0.5 }); }

    windowBy(source, dWidth, dCenter) {
      for (const viewport of this.windowTargets(source)) {
        const { width, center } = viewport.window;
        viewport.setWindow({ width: width + dWidth, center: center + dCenter });
      }
      this.changed();
    }

    preset(name, source = this.active) {
      for (const viewport of this.windowTargets(source)) viewport.setWindow(viewport.presetWindow(name));
      this.changed();
    }

    toggleInvert(source = this.active) {
      const invert = !source.invert;
      for (const viewport of this.windowTargets(source)) viewport.setInvert(invert);
      this.changed();
    }

    reset() {
      for (const viewport of this.viewports) {
        viewport.invert = false;
        viewport.setWindow(viewport.presetWindow("default"));
        viewport.setView({ zoom: 1, cx: 0.5, cy: 0.5 });
      }
      this.changed();
    }

    setLinkView(linked) {
      this.linkView = linked;
      if (linked) this.setView(this.active, this.active.view);
      this.changed();
    }

    setLinkWindow(linked) {
      this.linkWindow = linked;
      if (linked) {
        for (const viewport of this.viewports) {
          if (viewport === this.active) continue;
          viewport.invert = this.active.invert;
          viewport.setWindow(this.active.window.preset ? viewport.presetWindow(this.active.window.preset)
            : this.active.window);
        }
      }
      this.changed();
    }

    attach(viewport) {
      const canvas = viewport.canvas;
      let drag = null;
      canvas.addEventListener("pointerdown", (event) => {
        if (!viewport.hasImage) return;
        this.active = viewport;
        canvas.focus({ preventScroll: true });
        const pan = event.button === 1 || (event.button === 0 && (event.shiftKey || this.tool === "pan"));
        drag = { mode: event.button === 2 ? "zoom" : pan ? "pan" : "wl", x: event.clientX, y: event.clientY };
        canvas.setPointerCapture(event.pointerId);
        canvas.classList.add(`dragging-${drag.mode}`);
        event.preventDefault();
      });
      canvas.addEventListener("pointermove", (event) => {
        if (!drag) return;
        const dx = event.clientX - drag.x, dy = event.clientY - drag.y;
        drag.x = event.clientX; drag.y = event.clientY;
        if (drag.mode === "wl") this.windowBy(viewport, dx * WINDOW_PER_PIXEL, dy * WINDOW_PER_PIXEL);
        else if (drag.mode === "pan") this.panBy(viewport, dx, dy);
        else this.zoomBy(viewport, Math.exp(-dy * 0.01));
      });
      const end = (event) => {
        if (!drag) return;
        canvas.classList.remove(`dragging-${drag.mode}`);
        drag = null;
        if (canvas.hasPointerCapture(event.pointerId)) canvas.releasePointerCapture(event.pointerId);
      };
      canvas.addEventListener("pointerup", end);
      canvas.addEventListener("pointercancel", end);
      canvas.addEventListener("contextmenu", (event) => event.preventDefault());
      canvas.addEventListener("wheel", (event) => {
        if (!viewport.hasImage) return;
        event.preventDefault();
        this.active = viewport;
        const lines = event.deltaMode === 1 ? 16 : event.deltaMode === 2 ? 400 : 1;
        const rect = canvas.getBoundingClientRect();
        this.zoomBy(viewport, Math.exp(-event.deltaY * lines * WHEEL_SPEED),
          { x: event.clientX - rect.left, y: event.clientY - rect.top });
      }, { passive: false });
      canvas.addEventListener("dblclick", () => { if (viewport.hasImage) this.fit(viewport); });
      canvas.addEventListener("focus", () => { this.active = viewport; });
      canvas.addEventListener("keydown", (event) => {
        if (!viewport.hasImage || event.altKey || event.ctrlKey || event.metaKey) return;
        const step = (KEY_PAN * Math.min(canvas.clientWidth, canvas.clientHeight)) ;
        const moves = { ArrowLeft: [step, 0], ArrowRight: [-step, 0], ArrowUp: [0, step], ArrowDown: [0, -step] };
        if (moves[event.key]) {
          event.preventDefault();
          event.stopPropagation();
          this.panBy(viewport, ...moves[event.key]);
        }
      });
    }
  }

  global.ChextrievViewport = { Viewport, ViewerGroup, PRESETS };
})(window);
