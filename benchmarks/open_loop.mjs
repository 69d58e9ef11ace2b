// Open-loop load with Poisson arrivals (numbers, not a test): what independent users see.
//
// `hey -q R -c C` paces each of its C clients on its own ticker, all started together: the
// requests leave in bursts of C every 1/R s (measured: ~100 starts within 10 ms, then none for
// 90 ms, at -c 100 -q 10), so its latency is how long the gateway takes to drain a burst. Here
// requests are sent at exponentially distributed intervals (a Poisson process of `rate` per
// second) over at most `connections` keep-alive connections, and each latency is measured from
// the moment the request was due, not from when a connection was free (no coordinated omission).
//
//   node benchmarks/open_loop.mjs URL RATE SECONDS CONNECTIONS [BODY_JSON]
//
// Prints one JSON object: {"latencies_ms": [...], "statuses": {code: count}, "wall_s", "late"}
// ("late": requests due while all connections were busy). Node's own `http`, no packages.

import http from "node:http";

const [url, rateArg, secondsArg, connectionsArg, body] = process.argv.slice(2);
const rate = Number(rateArg);
const seconds = Number(secondsArg);
const connections = Number(connectionsArg);
const target = new URL(url);
const agent = new http.Agent({ keepAlive: true, maxSockets: connections });
const payload = body === undefined ? null : Buffer.from(body);

// A seeded generator (mulberry32), so every run offers the same arrival times.
let seed = 12345;
function random() {
  seed = (seed + 0x6d2b79f5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}

const due = [];
for (let at = 0; at < seconds * 1000; at += (-Math.log(1 - random()) / rate) * 1000) due.push(at);

const latencies = [];
const statuses = {};
let inFlight = 0;
let late = 0;
let finished = 0;

function send(dueAt, start) {
  if (inFlight >= connections) late += 1;
  inFlight += 1;
  const request = http.request(
    {
      host: target.hostname,
      port: target.port,
      path: target.pathname + target.search,
      method: payload ? "POST" : "GET",
      agent,
      headers: payload
        ? { "content-type": "application/json", "content-length": payload.length }
        : {},
    },
    (response) => {
      response.resume();
      response.on("end", () => {
        latencies.push(performance.now() - start - dueAt);
        statuses[response.statusCode] = (statuses[response.statusCode] || 0) + 1;
        done();
      });
    },
  );
  request.on("error", () => {
    statuses.error = (statuses.error || 0) + 1;
    done();
  });
  if (payload) request.write(payload);
  request.end();
}

function done() {
  inFlight -= 1;
  finished += 1;
  if (finished === due.length) {
    agent.destroy();
    const wall = (performance.now() - began) / 1000;
    process.stdout.write(JSON.stringify({ latencies_ms: latencies, statuses, wall_s: wall, late }));
  }
}

const began = performance.now();
let next = 0;
function tick() {
  const now = performance.now() - began;
  while (next < due.length && due[next] <= now) send(due[next++], began);
  if (next < due.length) setTimeout(tick, Math.max(0, Math.min(1, due[next] - now)));
}
tick();
