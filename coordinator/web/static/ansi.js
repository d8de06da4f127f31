// The live build page's log parser: coordinator/web/ansi.go in
// JavaScript, kept alike. A line becomes runs of text, each with the
// classes of its SGR colours; every other escape sequence and control
// character but the tab is dropped. Callers put the runs in the page with
// textContent: build output is never HTML.
"use strict";
const ForgeANSI = (() => {
  const maxLineRunes = 32 << 10;
  const plain = () => ({fg: -1, bg: -1, bold: false, dim: false, italic: false, underline: false});

  // style reads the page's "fg;bg;bold;dim;italic;underline" (buildView).
  function style(s) {
    const v = String(s || "").split(";").map(Number);
    if (v.length !== 6 || v.some(isNaN)) return plain();
    return {fg: v[0], bg: v[1], bold: !!v[2], dim: !!v[3], italic: !!v[4], underline: !!v[5]};
  }

  function cls(s) {
    const c = [];
    if (s.fg >= 0) c.push("ansi-f" + s.fg);
    if (s.bg >= 0) c.push("ansi-b" + s.bg);
    if (s.bold) c.push("ansi-bold");
    if (s.dim) c.push("ansi-dim");
    if (s.italic) c.push("ansi-italic");
    if (s.underline) c.push("ansi-underline");
    return c.join(" ");
  }

  function apply(s0, params) {
    const s = Object.assign({}, s0);
    let ps = params.split(/[;:]/).filter((p) => p !== "");
    if (ps.length === 0) ps = ["0"];
    for (let i = 0; i < ps.length; i++) {
      if (!/^[0-9]+$/.test(ps[i])) continue;
      const n = Number(ps[i]);
      if (n === 0) Object.assign(s, plain());
      else if (n === 1) s.bold = true;
      else if (n === 2) s.dim = true;
      else if (n === 3) s.italic = true;
      else if (n === 4) s.underline = true;
      else if (n === 22) { s.bold = false; s.dim = false; }
      else if (n === 23) s.italic = false;
      else if (n === 24) s.underline = false;
      else if (n >= 30 && n <= 37) s.fg = n - 30;
      else if (n === 39) s.fg = -1;
      else if (n >= 40 && n <= 47) s.bg = n - 40;
      else if (n === 49) s.bg = -1;
      else if (n >= 90 && n <= 97) s.fg = n - 90 + 8;
      else if (n >= 100 && n <= 107) s.bg = n - 100 + 8;
      else if (n === 38 || n === 48) {
        let c = -2, used = 0;
        if (i + 2 < ps.length && ps[i + 1] === "5") {
          const v = /^[0-9]+$/.test(ps[i + 2]) ? Number(ps[i + 2]) : -1;
          if (v >= 0 && v < 16) c = v;
          used = 2;
        } else if (i + 1 < ps.length && ps[i + 1] === "2") {
          used = 4;
        }
        if (c >= 0 && n === 38) s.fg = c;
        else if (c >= 0) s.bg = c;
        i += used;
      }
    }
    return s;
  }

  const code = (line, j) => line.charCodeAt(j);

  // escape skips the sequence at line[i] (an ESC), as ansi.go's escape.
  function escape(line, i, onSGR) {
    i++;
    if (i >= line.length) return i;
    const c = code(line, i);
    if (c === 0x5b) { // [
      let j = i + 1;
      while (j < line.length && code(line, j) >= 0x30 && code(line, j) <= 0x3f) j++;
      const params = line.slice(i + 1, j);
      while (j < line.length && code(line, j) >= 0x20 && code(line, j) <= 0x2f) j++;
      if (j >= line.length) return j;
      const f = code(line, j);
      if (f >= 0x40 && f <= 0x7e) {
        if (f === 0x6d && j === i + 1 + params.length) onSGR(params);
        return j + 1;
      }
      return j;
    }
    if (c === 0x5d || c === 0x50 || c === 0x5f || c === 0x5e) { // ] P _ ^
      for (let j = i + 1; j < line.length; j++) {
        if (code(line, j) === 0x07) return j + 1;
        if (code(line, j) === 0x1b && j + 1 < line.length && line[j + 1] === "\\") return j + 2;
      }
      return line.length;
    }
    if (c >= 0x20 && c <= 0x2f) {
      let j = i;
      while (j < line.length && code(line, j) >= 0x20 && code(line, j) <= 0x2f) j++;
      return Math.min(j + 1, line.length);
    }
    return i + 1;
  }

  // renderLine parses one line (no newline) starting in style st:
  // {segs: [{text, cls}], state, cut}.
  function renderLine(line, st) {
    let segs = [], cur = "", runes = 0, cut = 0;
    const flush = () => {
      if (cur !== "") { segs.push({text: cur, cls: cls(st)}); cur = ""; }
    };
    for (let i = 0; i < line.length;) {
      const c = code(line, i);
      if (c === 0x1b) {
        i = escape(line, i, (p) => { flush(); st = apply(st, p); });
        continue;
      }
      if (c === 0x0d) {
        let j = i;
        while (j < line.length && code(line, j) === 0x0d) j++;
        if (j < line.length) { cur = ""; segs = []; runes = 0; cut = 0; }
        i = j;
        continue;
      }
      if ((c < 0x20 && c !== 0x09) || c === 0x7f) { i++; continue; }
      const cp = line.codePointAt(i);
      const ch = String.fromCodePoint(cp);
      i += ch.length;
      if (cp >= 0x80 && cp <= 0x9f) continue;
      if (runes >= maxLineRunes) { cut++; continue; }
      runes++;
      cur += ch;
    }
    flush();
    return {segs, state: st, cut};
  }

  return {plain, style, renderLine, maxLineRunes};
})();
