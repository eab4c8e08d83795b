// The doctor's table for people: one row per finding, the fix under it, and a last line that says whether
// the node can run kvfabric. --json prints the report itself instead.
import type { DoctorReport, Status } from './types.js';

const MARK: Record<Status, string> = { ok: 'ok  ', warn: 'WARN', fail: 'FAIL', skip: '--  ' };

export function renderTable(report: DoctorReport, width = 120): string {
  const rows = report.checks;
  const groupW = Math.max(5, ...rows.map((r) => r.group.length));
  const nameW = Math.max(5, ...rows.map((r) => r.name.length));
  const indent = 4 + 2 + groupW + 2 + nameW + 2;
  const lines = [`${'    '}  ${'group'.padEnd(groupW)}  ${'check'.padEnd(nameW)}  detail`];
  for (const r of rows) {
    lines.push(`${MARK[r.status]}  ${r.group.padEnd(groupW)}  ${r.name.padEnd(nameW)}  ${wrap(r.detail, width - indent, indent)}`);
    if (r.fix && (r.status === 'warn' || r.status === 'fail')) lines.push(`${' '.repeat(indent)}fix: ${wrap(r.fix, width - indent - 5, indent + 5)}`);
  }
  const count = (s: Status) => rows.filter((r) => r.status === s).length;
  lines.push(
    '',
    `${report.ok ? 'ok' : 'FAILED'}: ${count('ok')} ok, ${count('warn')} warning(s), ${count('fail')} failure(s), ${count('skip')} not applicable`,
  );
  return lines.join('\n');
}

/** Word-wraps to `width` columns, continuation lines indented to the detail column. */
function wrap(text: string, width: number, indent: number): string {
  if (width < 30) return text;
  const out: string[] = [];
  let line = '';
  for (const word of text.split(' ')) {
    if (line && line.length + 1 + word.length > width) {
      out.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  out.push(line);
  return out.join(`\n${' '.repeat(indent)}`);
}
