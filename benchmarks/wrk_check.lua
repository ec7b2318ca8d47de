-- wrk script of the `requests` scenario: checks every response.
-- A response is good when its status is 200 and its body is exactly the
-- bytes given, hex-encoded, in BENCH_EXPECT_HEX; done() prints
-- "checked good=N bad=M" and the latency percentiles (p50, p99, p99.9, in
-- microseconds) for the load generator to parse.

local threads = {}

function setup(thread)
    table.insert(threads, thread)
end

function init(args)
    local hex = os.getenv("BENCH_EXPECT_HEX") or ""
    expected = hex:gsub("..", function(cc) return string.char(tonumber(cc, 16)) end)
    good = 0
    bad = 0
end

function response(status, headers, body)
    if status == 200 and body == expected then
        good = good + 1
    else
        bad = bad + 1
    end
end

function done(summary, latency, requests)
    local g, b = 0, 0
    for _, thread in ipairs(threads) do
        g = g + thread:get("good")
        b = b + thread:get("bad")
    end
    io.write(string.format("checked good=%d bad=%d\n", g, b))
    -- wrk's own --latency table stops at 99%: the tail, in microseconds.
    io.write(string.format("percentiles p50=%d p99=%d p999=%d\n",
        latency:percentile(50.0), latency:percentile(99.0), latency:percentile(99.9)))
end
