// A passive benchmark peer: allocates a pool, hands its metadata to the parent over IPC, and stays up
// (progressing incoming RMA on its rail threads) until told to exit.
import { Agent } from '../../src/index.js';

const [provider = 'tcp', poolBytes = String(256 << 20), rails = '1'] = process.argv.slice(2);
const agent = await Agent.create({ name: `bench-target-${process.pid}`, provider, rails: Number(rails), logger: false });
const pool = agent.allocate(Number(poolBytes));
pool.bytes.fill(7);
process.send!({ metadata: agent.getLocalMetadata().toString('base64'), region: pool.id });
process.on('message', async (msg: { cmd: string }) => {
  if (msg.cmd === 'exit') {
    await agent.close();
    process.disconnect();
  }
});
