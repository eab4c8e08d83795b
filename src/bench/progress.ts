// The progress bar of `kvfabric bench` (cli-progress, on stderr so stdout stays the table). Off when stderr
// is not a terminal or with --no-progress; then every call here is a no-op.
import { formatSize } from './options.js';

export interface Progress {
  /** Point `index` (0-based) is `fraction` done, moving `gbps` so far. */
  update(index: number, fraction: number, label: string, gbps: number): void;
  stop(): void;
}

const NONE: Progress = { update() {}, stop() {} };

export async function createProgress(enabled: boolean, points: number): Promise<Progress> {
  if (!enabled || !process.stderr.isTTY) return NONE;
  const { SingleBar, Presets } = await import('cli-progress');
  // Whole points count for 1000 units each, so the bar moves within a point too.
  const bar = new SingleBar(
    {
      format: '{bar} {percentage}% | point {point}/{points} | {label} | {gbps} GB/s | ETA {eta_formatted}',
      hideCursor: true,
      clearOnComplete: true,
      stream: process.stderr,
    },
    Presets.shades_classic,
  );
  bar.start(points * 1000, 0, { point: 1, points, label: '', gbps: '-' });
  return {
    update(index, fraction, label, gbps) {
      bar.update(Math.round((index + fraction) * 1000), { point: index + 1, points, label, gbps: gbps.toFixed(2) });
    },
    stop() {
      bar.stop();
    },
  };
}

export function pointLabel(op: string, block: number, batch: number): string {
  return `${op} ${formatSize(block)} ×${batch}`;
}
