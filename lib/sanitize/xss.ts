import { triggerPattern, type Trigger } from './trigger';
import type { StringDetector } from './types';

const XSS_TRIGGER: Trigger = { chars: '<>"\'`:%&+{\\' };

// Elements that run code or change how the page loads, on their own or through one attribute.
// Harmless markup (`<b>`, `<a href="https://…">`, `John <john@example.com>`) is not an attack.
const DANGEROUS_TAG =
  /<[/?]?(?:script|iframe|frame|frameset|object|embed|applet|base|link|meta|style|svg|math|xml|import|isindex|portal|bgsound|layer|ilayer|xss)(?![\w:-])/i;

// Any on*= attribute inside tag syntax. `[^<>]*?` stops at the next bracket, so each tag is
// scanned once and the whole string in linear time.
const TAG_EVENT = /<[a-z!/?][^<>]*?[\s/"'`]on[a-z]{3,40}\s*=/i;

// An event handler outside a tag: the attribute-breakout form `" onmouseover="…`. Only the
// browser's real handler names count, so `online=true` stays text.
const BARE_EVENT = /(?:^|[\s/"'`;])on([a-z]{3,40})\s*=/gi;
const EVENT_NAMES = new Set(
  (
    'abort activate afterprint afterupdate animationcancel animationend animationiteration animationstart auxclick ' +
    'beforeactivate beforecopy beforecut beforedeactivate beforeeditfocus beforeinput beforematch beforepaste ' +
    'beforeprint beforetoggle beforeunload beforeupdate begin blur bounce cancel canplay canplaythrough cellchange ' +
    'change click close contextmenu controlselect copy cuechange cut dataavailable datasetchanged datasetcomplete ' +
    'dblclick deactivate drag dragend dragenter dragleave dragover dragstart drop durationchange emptied end ended ' +
    'error errorupdate filterchange finish focus focusin focusout formdata fullscreenchange gotpointercapture ' +
    'hashchange help input invalid keydown keypress keyup layoutcomplete load loadeddata loadedmetadata loadstart ' +
    'losecapture lostpointercapture message mousedown mouseenter mouseleave mousemove mouseout mouseover mouseup ' +
    'mousewheel move moveend movestart mozfullscreenchange offline online pagehide pageshow paste pause play playing ' +
    'pointercancel pointerdown pointerenter pointerleave pointermove pointerout pointerover pointerrawupdate ' +
    'popstate progress propertychange ratechange readystatechange repeat reset resize rowenter rowexit rowsdelete ' +
    'rowsinserted scroll scrollend search securitypolicyviolation seeked seeking select selectionchange selectstart ' +
    'show slotchange stalled start storage submit suspend timeupdate toggle touchcancel touchend touchmove touchstart ' +
    'transitioncancel transitionend transitionrun transitionstart unload volumechange waiting webkitanimationend ' +
    'webkitanimationiteration webkitanimationstart webkitfullscreenchange webkittransitionend wheel'
  ).split(' '),
);

// Browsers drop tabs, newlines and NULs inside a URL scheme (`jav&#x09;ascript:`), so the
// scheme is matched letter by letter with those allowed between; the lookahead asks for code
// after the colon, so a title like "JavaScript: The Good Parts" stays text.
const G = '[\\t\\n\\r\\0]*';
const SCHEME = `(?:(?:j${G}a${G}v${G}a${G}|v${G}b${G}|l${G}i${G}v${G}e${G})s${G}c${G}r${G}i${G}p${G}t|m${G}o${G}c${G}h${G}a)${G}:`;
const SCRIPT_URL = new RegExp(`(?:^|[^a-z0-9_])${SCHEME}(?=[\\s\\0]*(?:[\\w$.\\[\\]'"]{1,64}\\s*[(\`=]|[/'"(\\[{!~+\\-\`;%&]|$))`, 'i');
const SCRIPT_SCHEME = new RegExp(`\\b${SCHEME}`, 'gi');
const DATA_URL = /(?:^|[^a-z0-9_])data\s*:\s*(?:text\/html|text\/xml|image\/svg\+xml|application\/xhtml|application\/(?:x-)?javascript|text\/javascript)/i;
const DATA_SCHEME = /\bdata\s*:(?=\s*(?:text\/html|text\/xml|image\/svg\+xml|application\/xhtml|application\/(?:x-)?javascript|text\/javascript))/gi;

// Old-IE and Firefox CSS that runs script, Netscape `&{…}` script entities, and a CSS comment
// inside an inline style (`expr/**/ession(`), which only evasion needs.
const CSS_SCRIPT = /[:=]\s*expression\s*\(|behavior\s*:\s*url\s*\(|-moz-binding\s*:|["'=]\s*&\{|<[a-z][^<>]*?\bstyle\s*=[^<>]*?\/\*/i;
const CSS_SCRIPT_G = /expression(?=\s*\()|behavior(?=\s*:\s*url\s*\()|-moz-binding(?=\s*:)/gi;

// Breaking out of a JavaScript string into a call: `';alert(1)//`, `"-confirm(1)-"`.
const JS_BREAKOUT =
  /["'`][\s)}\]]*[;+\-*/|&,][\s(]*(?:(?:alert|confirm|prompt|eval|fetch|setTimeout|setInterval|Function|import|String\s*\.\s*fromCharCode)\s*[(`]|(?:document|window|top|self|parent|location|constructor)\.[a-z_$]|location\s*=)/i;
const JS_BREAKOUT_G = new RegExp(JS_BREAKOUT.source, 'gi');

// Client-side template injection (AngularJS, Vue): `{{constructor.constructor('alert(1)')()}}`.
const TEMPLATE = /\{\{[^{}]{0,256}?(?:constructor|\$eval|\$on\b|\$new|alert\s*\(|fromCharCode|\$\$)/i;
const TEMPLATE_G = new RegExp(TEMPLATE.source, 'gi');

// UTF-7 `<` and `>` (`+ADw-script+AD4-`), for pages served without a charset.
const UTF7 = /\+AD[w4]-/;
const UTF7_G = /\+AD[w4]-/g;

const ANY_TAG = /<[a-z!/?][^<>]*>?/gi;
const OUTSIDE_EVENT_G = /on(?<![^\s/"'`;]on)[a-z]{3,40}\s*=\s*(?:"[^"]*"?|'[^']*'?|`[^`]*`?|[^\s>]*)/gi;
const RAW_TEXT_OPEN = /<(script|style)(?![\w-])/gi;
const SCRIPT_CLOSE = /<\/script/gi;
const STYLE_CLOSE = /<\/style/gi;

function hasBareEvent(s: string): boolean {
  BARE_EVENT.lastIndex = 0;
  for (let m = BARE_EVENT.exec(s); m !== null; m = BARE_EVENT.exec(s)) {
    if (EVENT_NAMES.has(m[1].toLowerCase())) return true;
  }
  return false;
}

/**
 * Removes `<script>…</script>` and `<style>…</style>` with their content: it is code, not text.
 * One pass: each element's close is searched from its open, and the search for the next open
 * starts after that close. An element without its close takes the rest of the value with it.
 */
function dropRawText(s: string): string {
  let out = '';
  let copied = 0;
  RAW_TEXT_OPEN.lastIndex = 0;
  for (let open = RAW_TEXT_OPEN.exec(s); open !== null; open = RAW_TEXT_OPEN.exec(s)) {
    out += s.slice(copied, open.index);
    const close = open[1].length === 6 ? SCRIPT_CLOSE : STYLE_CLOSE;
    close.lastIndex = open.index + open[0].length;
    const closed = close.exec(s);
    const end = closed === null ? -1 : s.indexOf('>', closed.index);
    if (end === -1) return out;
    copied = end + 1;
    RAW_TEXT_OPEN.lastIndex = copied;
  }
  return copied === 0 ? s : out + s.slice(copied);
}

/**
 * XSS: tag syntax that runs code (`<script`, `<iframe`, `<svg`, any tag with an `on*=` handler),
 * `javascript:` / `vbscript:` / `data:text/html` URLs followed by code, handler attributes
 * breaking out of a quoted attribute, CSS `expression(`, JavaScript string breakouts into a call,
 * template injection and UTF-7 markup. Strip removes tags (and the content of script and style
 * elements), handler attributes, script URL schemes and the other constructs; the text stays.
 */
export const xss: StringDetector = {
  category: 'xss',
  trigger: triggerPattern(XSS_TRIGGER),
  triggerSpec: XSS_TRIGGER,
  patterns: [DANGEROUS_TAG, TAG_EVENT, BARE_EVENT, SCRIPT_URL, SCRIPT_SCHEME, DATA_URL, DATA_SCHEME, CSS_SCRIPT, CSS_SCRIPT_G, JS_BREAKOUT, TEMPLATE, UTF7, ANY_TAG, OUTSIDE_EVENT_G, RAW_TEXT_OPEN, SCRIPT_CLOSE, STYLE_CLOSE],
  detect(s) {
    return (
      DANGEROUS_TAG.test(s) ||
      TAG_EVENT.test(s) ||
      SCRIPT_URL.test(s) ||
      DATA_URL.test(s) ||
      hasBareEvent(s) ||
      CSS_SCRIPT.test(s) ||
      JS_BREAKOUT.test(s) ||
      TEMPLATE.test(s) ||
      UTF7.test(s)
    );
  },
  strip(s) {
    return dropRawText(s)
      .replace(ANY_TAG, '')
      .replace(OUTSIDE_EVENT_G, '')
      .replace(SCRIPT_SCHEME, '')
      .replace(DATA_SCHEME, '')
      .replace(CSS_SCRIPT_G, '')
      .replace(JS_BREAKOUT_G, '')
      .replace(TEMPLATE_G, '')
      .replace(UTF7_G, '');
  },
};
