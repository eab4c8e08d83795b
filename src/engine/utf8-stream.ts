// Incremental UTF-8 decoding: bytes arrive in arbitrary pieces (byte-level BPE tokens may split a
// multi-byte character), and only complete characters come out. An incomplete sequence at the end of
// the input so far is held back until its remaining bytes arrive; bytes that can never form a valid
// character become U+FFFD as soon as that is certain (WHATWG "replacement" mode, as TextDecoder does).

export class Utf8StreamDecoder {
  private readonly decoder = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });

  /** Decodes `bytes` after what came before; returns the text that is now complete (possibly ''). */
  push(bytes: Uint8Array): string {
    return this.decoder.decode(bytes, { stream: true });
  }

  /** Ends the stream: an incomplete trailing sequence becomes U+FFFD. The decoder can then be reused. */
  flush(): string {
    return this.decoder.decode();
  }
}
