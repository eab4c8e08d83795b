// The passive side of `kvfabric bench`: allocates and registers the pool, hands out its metadata, and stays
// up until the initiator is done. It posts nothing; the addon's rail threads serve the one-sided READs and
// WRITEs. Forked by an initiator (metadata over IPC) or standalone with --listen (metadata over TCP).
import { createServer, type Socket } from 'node:net';

import { openAgent } from './agent.js';
import { describeMachine } from './machine.js';
import { formatSize, type TargetOptions } from './options.js';
import { allocatePool } from './pool.js';
import { isPeerMessage, readFrames, writeFrame, type IntroducedMessage, type PeerMessage, type TargetHello } from './wire.js';

export async function runTarget(options: TargetOptions): Promise<void> {
  const agent = await openAgent('target', options);
  // Every page touched now, so the first timed transfers do not pay the page faults.
  const pool = allocatePool(agent, options, 7);
  const hello: TargetHello = {
    metadata: agent.getLocalMetadata().toString('base64'),
    region: pool.id,
    poolBytes: options.pool,
    provider: agent.provider,
    rails: agent.rails,
    machine: describeMachine(),
  };
  // The initiator's metadata, when it sends it: a device pool is staged for the initiator, answered on the notification channel.
  const introduce = (m: PeerMessage): IntroducedMessage => {
    try {
      agent.loadRemoteMetadata(Buffer.from(m.metadata, 'base64'));
      return { cmd: 'introduced' };
    } catch (err) {
      return { cmd: 'introduced', error: String((err as Error).message) };
    }
  };
  await (options.listen === undefined ? serveIpc(hello, introduce) : serveTcp(hello, options, introduce));
  await agent.close();
}

/** Forked: the hello goes up the IPC channel; "done" or the parent going away ends it. */
function serveIpc(hello: TargetHello, introduce: (m: PeerMessage) => IntroducedMessage): Promise<void> {
  if (!process.send) throw new Error('bench: --target without --listen must be forked by `kvfabric bench` (or give --listen host:port)');
  return new Promise((resolve) => {
    const finish = () => {
      process.off('message', onMessage);
      process.off('disconnect', finish);
      // Let the IPC channel go so the process can exit once the agent is closed.
      if (process.connected) process.disconnect();
      resolve();
    };
    const onMessage = (m: unknown) => {
      if ((m as { cmd?: string } | null)?.cmd === 'done') finish();
      else if (isPeerMessage(m)) process.send!(introduce(m));
    };
    process.on('message', onMessage);
    process.on('disconnect', finish);
    process.send!(hello);
  });
}

/**
 * Standalone: every connection gets the hello; a "done" frame ends the target. A connection that closes
 * without "done" (an initiator that crashed or was interrupted) leaves it up for the next one.
 */
function serveTcp(hello: TargetHello, options: TargetOptions, introduce: (m: PeerMessage) => IntroducedMessage): Promise<void> {
  const listen = options.listen!;
  return new Promise((resolve, reject) => {
    const sockets = new Set<Socket>();
    const server = createServer((socket) => {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
      socket.on('error', () => {}); // a peer resetting its socket is not the target's failure
      readFrames(socket, (m) => {
        if (isPeerMessage(m)) return writeFrame(socket, introduce(m));
        if ((m as { cmd?: string } | null)?.cmd !== 'done') return;
        server.close(() => resolve());
        for (const s of sockets) s.end();
      });
      writeFrame(socket, hello);
    });
    server.once('error', reject);
    server.listen(listen.port, listen.host, () => {
      const addr = server.address();
      const port = typeof addr === 'object' && addr ? addr.port : listen.port;
      const host = listen.host.includes(':') ? `[${listen.host}]` : listen.host;
      // Tests and scripts read the port from this line when they asked for port 0.
      console.log(
        `kvfabric bench target listening on ${host}:${port} (provider ${hello.provider}, ${hello.rails} rail(s), pool ${formatSize(hello.poolBytes)})`,
      );
    });
  });
}
