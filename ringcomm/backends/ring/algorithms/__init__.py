"""The ring backend's algorithms: one file each, plain functions over links and buffers.

An algorithm sees links (`transport.link.Link`: a TCP connection or a shared-memory
channel pair), the buffers of the call and a header check per sending rank; it knows
nothing of sockets' set-up, segments, plans or the watch. Which one a call takes is decided
once, in `RingBackend` (`choose.py` holds the table).

- `rows`: rank-order reduction of rows, and the even split of a range;
- `ring`: every rank's message once around the ring (the latency path);
- `doubling`: the same by recursive doubling over direct links (log2 p exchanges);
- `pair`: two ranks over TCP, one call of the compiled core;
- `pipeline`: the bandwidth ring, pipelined over every lane in both directions;
- `relay`: broadcast of a large message down the chain from the root;
- `pairwise`: all_to_all as p-1 direct exchanges;
- `hierarchical`: shared memory inside a host, a ring across hosts.

One host's collectives through its segment are `ring/local.py`.
"""
