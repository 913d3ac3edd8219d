import { useEffect, useState } from "preact/hooks";
import { api, type Page } from "../api";
import { ErrorBox, Link, StatusBadge, useLoad } from "../components/ui";
import { dateTime } from "../format";
import { navigate } from "../router";

interface KnowledgeBase {
  id: string;
  name: string;
  description: string | null;
  status: string;
  document_count: number;
  chunk_count: number;
  embedding_provider: string;
  vector_store: string;
  updated_at: string;
}

interface Document {
  id: string;
  name: string;
  status: string;
  error_code: string | null;
  error: string | null;
  chunk_count: number;
  size_bytes: number | null;
  created_at: string;
}

interface Created {
  document: Document;
  upload?: { url: string; fields: Record<string, string>; max_bytes: number } | null;
}

interface Passage {
  text: string;
  score: number;
  document_name?: string;
  document_id?: string;
  chunk_index?: number;
}

export function KnowledgeBases() {
  const [kbs, error, reload] = useLoad(() => api<Page<KnowledgeBase>>("/knowledge-bases", { query: { limit: 100 } }));
  const [name, setName] = useState("");
  const [createError, setCreateError] = useState<unknown>(null);
  async function create(event: Event) {
    event.preventDefault();
    try {
      const kb = await api<KnowledgeBase>("/knowledge-bases", { method: "POST", body: { name } });
      setName("");
      reload();
      navigate(`/knowledge/${kb.id}`);
    } catch (err) {
      setCreateError(err);
    }
  }
  return (
    <section>
      <header class="page-head">
        <h1>Knowledge bases</h1>
        <form class="row" onSubmit={create}>
          <input name="kb_name" placeholder="New knowledge base" value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} />
          <button type="submit" disabled={!name.trim()}>
            Create
          </button>
        </form>
      </header>
      <ErrorBox error={error || createError} />
      <table class="list" data-testid="kb-list">
        <thead>
          <tr>
            <th>Name</th>
            <th>Status</th>
            <th>Documents</th>
            <th>Chunks</th>
            <th>Embeddings / store</th>
            <th>Updated</th>
          </tr>
        </thead>
        <tbody>
          {kbs?.data.map((kb) => (
            <tr key={kb.id}>
              <td>
                <Link href={`/knowledge/${kb.id}`}>{kb.name}</Link>
              </td>
              <td>
                <StatusBadge status={kb.status} />
              </td>
              <td>{kb.document_count}</td>
              <td>{kb.chunk_count}</td>
              <td>
                {kb.embedding_provider} / {kb.vector_store}
              </td>
              <td>{dateTime(kb.updated_at)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}

export function KnowledgeBaseDetail({ id }: { id: string }) {
  const [kb, error] = useLoad(() => api<KnowledgeBase>(`/knowledge-bases/${id}`), [id]);
  const [docs, docsError, reloadDocs] = useLoad(
    () => api<Page<Document>>(`/knowledge-bases/${id}/documents`, { query: { limit: 200 } }),
    [id],
  );
  const [uploading, setUploading] = useState<string[]>([]);
  const [uploadError, setUploadError] = useState<unknown>(null);
  const [dragging, setDragging] = useState(false);
  const [query, setQuery] = useState("");
  const [passages, setPassages] = useState<Passage[] | null>(null);
  const [queryError, setQueryError] = useState<unknown>(null);

  // Documents in flight: poll until each is ready or failed.
  const pending = docs?.data.some((d) => ["pending_upload", "uploaded", "processing"].includes(d.status));
  useEffect(() => {
    if (!pending) return;
    const timer = window.setTimeout(reloadDocs, 1500);
    return () => window.clearTimeout(timer);
  }, [docs]);

  async function upload(files: FileList | File[]) {
    setUploadError(null);
    for (const file of Array.from(files)) {
      setUploading((all) => [...all, file.name]);
      try {
        const created = await api<Created>(`/knowledge-bases/${id}/documents`, {
          method: "POST",
          body: { filename: file.name, content_type: file.type || undefined, size_bytes: file.size },
        });
        if (created.upload) {
          // The presigned POST: its fields first, the file last (S3's rule).
          const form = new FormData();
          for (const [key, value] of Object.entries(created.upload.fields)) form.append(key, value);
          form.append("file", file);
          const response = await fetch(created.upload.url, { method: "POST", body: form });
          if (!response.ok) throw new Error(`upload of ${file.name} failed: HTTP ${response.status}`);
        }
      } catch (err) {
        setUploadError(err);
      } finally {
        setUploading((all) => all.filter((n) => n !== file.name));
        reloadDocs();
      }
    }
  }

  async function ask(event: Event) {
    event.preventDefault();
    setQueryError(null);
    try {
      const result = await api<{ data: Passage[] }>(`/knowledge-bases/${id}/query`, {
        method: "POST",
        body: { query, top_k: 5 },
      });
      setPassages(result.data);
    } catch (err) {
      setQueryError(err);
    }
  }

  if (error) return <ErrorBox error={error} />;
  return (
    <section>
      <header class="page-head">
        <div>
          <h1>{kb?.name ?? "Knowledge base"}</h1>
          <div class="muted small">
            {id} · {kb?.embedding_provider} / {kb?.vector_store}
          </div>
        </div>
      </header>
      <div
        class={`dropzone${dragging ? " dragging" : ""}`}
        data-testid="dropzone"
        onDragOver={(e) => {
          e.preventDefault();
          setDragging(true);
        }}
        onDragLeave={() => setDragging(false)}
        onDrop={(e) => {
          e.preventDefault();
          setDragging(false);
          if (e.dataTransfer?.files.length) void upload(e.dataTransfer.files);
        }}
      >
        <p>Drop PDF, Word, HTML, Markdown or text files here</p>
        <label class="button secondary">
          or choose files
          <input type="file" multiple hidden onChange={(e) => upload((e.target as HTMLInputElement).files ?? [])} />
        </label>
        {uploading.length > 0 && <p class="muted">Uploading {uploading.join(", ")}…</p>}
      </div>
      <ErrorBox error={uploadError || docsError} />
      <h2>Documents</h2>
      <table class="list" data-testid="documents">
        <thead>
          <tr>
            <th>Name</th>
            <th>Status</th>
            <th>Chunks</th>
            <th>Size</th>
            <th>Added</th>
          </tr>
        </thead>
        <tbody>
          {docs?.data.map((doc) => (
            <tr key={doc.id}>
              <td>{doc.name}</td>
              <td>
                <StatusBadge status={doc.status} />
                {doc.status === "failed" && (
                  <div class="problem">
                    {doc.error_code}: {doc.error}
                  </div>
                )}
              </td>
              <td>{doc.chunk_count}</td>
              <td>{doc.size_bytes ?? "–"}</td>
              <td>{dateTime(doc.created_at)}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <h2>Query</h2>
      <form class="row" onSubmit={ask}>
        <input name="query" placeholder="Ask what a caller would ask" value={query} onInput={(e) => setQuery((e.target as HTMLInputElement).value)} />
        <button type="submit" disabled={!query.trim()}>
          Search
        </button>
      </form>
      <ErrorBox error={queryError} />
      {passages && (
        <ol class="passages" data-testid="passages">
          {passages.map((p, index) => (
            <li key={index}>
              <div class="small muted">
                score {p.score.toFixed(3)} · {p.document_name ?? p.document_id}
              </div>
              <p>{p.text}</p>
            </li>
          ))}
          {!passages.length && <p class="muted">No passage matched.</p>}
        </ol>
      )}
    </section>
  );
}
