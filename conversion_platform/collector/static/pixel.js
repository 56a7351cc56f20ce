/*! Conversion platform pixel. Include it from your collector's first-party host:
 *    <script src="https://collect.shop.example/pixel.js" data-site="shop"></script>
 *  then  var id = cp('track', 'purchase', {value: 42.5, currency: 'EUR', order_id: 'A-1001'});
 *  `id` is the event_id sent; pass it to your backend so both copies are deduplicated.
 *  Calls made before the script loaded (window.cp.q, from a stub) are sent when it loads.
 *  No dependencies; the collector sets the first-party `_mpid` cookie itself (HttpOnly).
 */
(function (w, d) {
  "use strict";
  var script = d.currentScript;
  // The collector's base URL is where this script came from (a subdomain such as
  // https://collect.shop.example, or a path on the site behind its proxy, /collect).
  var endpoint = script && script.src
    ? new URL(script.src, d.baseURI).href.replace(/\/pixel\.js([?#].*)?$/, "")
    : w.location.origin;
  var site = script ? script.getAttribute("data-site") : null;
  var FIELDS = [
    "event_time", "action_source", "value", "currency", "order_id", "items",
    "email", "phone", "first_name", "last_name", "external_id",
    "city", "region", "postal_code", "country",
    "consent_ad_user_data", "consent_ad_personalization"
  ];

  function uuid() {
    if (w.crypto && w.crypto.randomUUID) return w.crypto.randomUUID();
    var b = new Uint8Array(16);
    w.crypto.getRandomValues(b);
    b[6] = (b[6] & 15) | 64;
    b[8] = (b[8] & 63) | 128;
    var h = "";
    for (var i = 0; i < 16; i++) h += (b[i] + 256).toString(16).slice(1);
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" +
      h.slice(16, 20) + "-" + h.slice(20);
  }

  function cookie(name) {
    var m = d.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
    if (!m) return undefined;
    try { return decodeURIComponent(m[1]); } catch (e) { return m[1]; }
  }

  function query(event) {
    var parts = [];
    for (var k in event) {
      if (!Object.prototype.hasOwnProperty.call(event, k)) continue;
      var v = event[k];
      if (typeof v === "object") v = JSON.stringify(v);
      parts.push(encodeURIComponent(k) + "=" + encodeURIComponent(String(v)));
    }
    return parts.join("&");
  }

  function send(event) {
    var body = JSON.stringify(event);
    var url = endpoint + "/v1/pixel";
    // text/plain keeps the request "simple": no CORS preflight, and sendBeacon accepts it.
    try {
      if (navigator.sendBeacon &&
          navigator.sendBeacon(url, new Blob([body], { type: "text/plain;charset=UTF-8" }))) {
        return;
      }
    } catch (e) { /* fall through */ }
    if (w.fetch) {
      try {
        w.fetch(url, {
          method: "POST", body: body, keepalive: true, credentials: "include", mode: "cors",
          headers: { "Content-Type": "text/plain;charset=UTF-8" }
        })["catch"](function () {});
        return;
      } catch (e) { /* fall through */ }
    }
    new Image(1, 1).src = endpoint + "/v1/pixel.gif?" + query(event);
  }

  function track(name, props) {
    props = props || {};
    var event = {
      event_name: name,
      event_id: props.event_id ? String(props.event_id) : uuid(),
      page_url: w.location.href
    };
    if (d.referrer) event.referrer = d.referrer;
    for (var i = 0; i < FIELDS.length; i++) {
      var v = props[FIELDS[i]];
      if (v !== undefined && v !== null && v !== "") event[FIELDS[i]] = v;
    }
    var fbp = cookie("_fbp"), fbc = cookie("_fbc"), ttp = cookie("_ttp");
    if (fbp) event.fbp = fbp;
    if (fbc) event.fbc = fbc;
    if (ttp) event.ttp = ttp;
    if (site) event.site = site;
    send(event);
    return event.event_id;
  }

  function cp(command, name, props) {
    if (command === "track") return track(name, props);
    throw new Error("cp: unknown command " + command);
  }

  var queued = (w.cp && w.cp.q) || [];
  w.cp = cp;
  for (var j = 0; j < queued.length; j++) cp.apply(null, queued[j]);
})(window, document);
