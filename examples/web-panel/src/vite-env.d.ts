/// <reference types="vite/client" />

interface ImportMetaEnv {
  /** The control plane's API URL, e.g. https://clawplane.example.com (else ?api= or http://127.0.0.1:7700). */
  readonly VITE_CLAWPLANE_URL?: string;
}

interface ImportMeta {
  readonly env: ImportMetaEnv;
}
