// Lint for the TypeScript (src, tests, benchmarks, examples, scripts) and the dashboard's browser script (web/):
// ESLint's and typescript-eslint's recommended rules; formatting is prettier's job (npm run format), not the linter's.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  {
    ignores: [
      'dist/**',
      'build*/**',
      'node_modules/**',
      'prebuilds/**',
      'fuzz/node_modules/**',
      'benchmarks/out/**',
      'benchmarks/crosscheck/**',
      'benchmarks/aiperf/.venv/**',
      'benchmarks/aiperf/out/**',
      'models/**',
      '.gpu/**',
    ],
  },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: {
      globals: {
        process: 'readonly',
        console: 'readonly',
        Buffer: 'readonly',
        setTimeout: 'readonly',
        clearTimeout: 'readonly',
        setInterval: 'readonly',
        clearInterval: 'readonly',
        performance: 'readonly',
        fetch: 'readonly',
        URL: 'readonly',
        TextDecoder: 'readonly',
        TextEncoder: 'readonly',
        AbortController: 'readonly',
        AbortSignal: 'readonly',
        queueMicrotask: 'readonly',
        setImmediate: 'readonly',
        structuredClone: 'readonly',
        Response: 'readonly',
      },
    },
    rules: {
      // A callback that reads a variable assigned once, later (agent.ts binds its events handler before the Agent exists).
      'prefer-const': ['error', { ignoreReadBeforeAssign: true }],
      // `_name` marks a value taken apart on purpose and not used.
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', destructuredArrayIgnorePattern: '^_' }],
    },
  },
  {
    // The dashboard's page script runs in the browser as a classic script (web/dashboard/index.html).
    files: ['web/**/*.js'],
    languageOptions: {
      sourceType: 'script',
      globals: {
        document: 'readonly',
        fetch: 'readonly',
        Node: 'readonly',
        TextDecoderStream: 'readonly',
        AbortController: 'readonly',
        setTimeout: 'readonly',
        clearTimeout: 'readonly',
      },
    },
  },
);
