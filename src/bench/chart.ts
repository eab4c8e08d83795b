// The bench chart: GB/s against block size (log2 axis), one line per op (and per path when points took
// different paths), drawn with vega-lite + vega headless to SVG, and rasterised to PNG with resvg.
// These are optional dependencies, loaded only when --chart is given; the rest of the tool runs without them.
import { writeFileSync } from 'node:fs';

import { formatSize } from './options.js';
import type { BenchResult } from './report.js';

// Only what is used of each module. Imported through a variable so that the build does not need them.
interface VegaModule {
  parse(spec: unknown): unknown;
  View: new (runtime: unknown, options: { renderer: 'none' }) => { toSVG(scale?: number): Promise<string>; finalize(): void };
}
interface VegaLiteModule {
  compile(spec: unknown): { spec: unknown };
}
interface ResvgModule {
  Resvg: new (svg: string, options?: object) => { render(): { asPng(): Buffer } };
}

export type ChartWriter = (result: BenchResult) => Promise<void>;

async function load<T>(name: string): Promise<T> {
  const specifier: string = name;
  return (await import(specifier)) as T;
}

/**
 * Loads the chart libraries now, before minutes of measuring, and returns the writer for `file`.
 * Missing libraries are an error that says how to install them.
 */
export async function loadChartWriter(file: string): Promise<ChartWriter> {
  const png = /\.png$/i.test(file);
  const names = png ? ['vega', 'vega-lite', '@resvg/resvg-js'] : ['vega', 'vega-lite'];
  let vega: VegaModule;
  let vegaLite: VegaLiteModule;
  let resvg: ResvgModule | undefined;
  try {
    vega = await load<VegaModule>('vega');
    vegaLite = await load<VegaLiteModule>('vega-lite');
    if (png) resvg = await load<ResvgModule>('@resvg/resvg-js');
  } catch (err) {
    throw new Error(
      `bench: --chart needs the optional dependencies ${names.join(', ')} (${(err as Error).message.split('\n')[0]}); ` +
        `install them with: npm install ${names.join(' ')}`,
      { cause: err },
    );
  }
  return async (result) => {
    const svg = await renderSvg(vega, vegaLite, result);
    if (resvg)
      writeFileSync(
        file,
        new resvg.Resvg(svg, {
          fitTo: { mode: 'zoom', value: 2 },
          background: 'white',
          // vega asks for sans-serif, which resvg maps to Arial; most Linux hosts have DejaVu instead.
          font: { loadSystemFonts: true, sansSerifFamily: 'DejaVu Sans', defaultFontFamily: 'DejaVu Sans' },
        })
          .render()
          .asPng(),
      );
    else writeFileSync(file, svg);
  };
}

export function chartSpec(result: BenchResult): object {
  const paths = new Set(result.points.map((p) => p.path));
  const values = result.points.map((p) => ({
    block: p.blockBytes,
    gbps: p.gbps,
    series: paths.size > 1 ? `${p.op} (${p.path})` : p.op,
  }));
  const sizes = [...new Set(result.points.map((p) => p.blockBytes))].sort((a, b) => a - b);
  // Tick labels as 4K, 1M…: a chain of comparisons, which any vega expression parser accepts.
  const labelExpr = sizes.reduceRight((rest, s) => `datum.value == ${s} ? '${formatSize(s)}' : ${rest}`, 'datum.label');
  const lo = sizes[0]!;
  const hi = sizes[sizes.length - 1]!;
  const where = result.target === 'fork' ? 'same host' : `target ${result.target}`;
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: {
      text: `kvfabric bench: ${result.provider}, ${result.rails} rail(s), ${where}`,
      subtitle:
        `${result.machine.cpu}, ${result.machine.cores} cores; pool ${formatSize(result.options.pool)}, depth ${result.options.depth}` +
        (paths.size === 1 ? `; path ${[...paths][0]}` : ''),
    },
    width: 640,
    height: 360,
    background: 'white',
    data: { values },
    mark: { type: 'line', point: true },
    encoding: {
      x: {
        field: 'block',
        type: 'quantitative',
        title: 'block size',
        // A single size would make an empty log domain: widen it by a factor of 2 each way.
        scale: { type: 'log', base: 2, domain: lo === hi ? [lo / 2, hi * 2] : [lo, hi] },
        axis: { values: sizes, labelExpr },
      },
      y: { field: 'gbps', type: 'quantitative', title: 'GB/s (decimal)' },
      color: { field: 'series', type: 'nominal', title: null },
    },
  };
}

async function renderSvg(vega: VegaModule, vegaLite: VegaLiteModule, result: BenchResult): Promise<string> {
  const view = new vega.View(vega.parse(vegaLite.compile(chartSpec(result)).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}
