# The workspace image for Modal sandboxes and E2B templates: Node 22, pnpm, git, and a Next.js
# template's dependencies already in the pnpm store, so the first install in a workspace is
# mostly a copy. Build for linux/amd64 (both providers run amd64).
#
#   docker build --platform linux/amd64 -f sandbox-templates/nextjs/workspace.Dockerfile \
#     -t ghcr.io/<org>/qai-workspace-nextjs:1 sandbox-templates/nextjs
FROM node:22-bookworm

# tar, coreutils (sha256sum, timeout), procps and util-linux (setsid) are what qai-jobs' adapters
# run inside the sandbox; python3 lets Modal run its helpers without adding its own.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates curl procps tar python3 \
 && rm -rf /var/lib/apt/lists/*

ENV PNPM_HOME=/usr/local/share/pnpm \
    PATH=/usr/local/share/pnpm:$PATH \
    NEXT_TELEMETRY_DISABLED=1 \
    HOSTNAME=0.0.0.0 \
    PORT=3000
RUN corepack enable && corepack prepare pnpm@9 --activate

# Warm the pnpm store with a fresh Next.js app's dependencies, then drop the app itself.
RUN mkdir -p /opt/template && cd /opt/template \
 && npx -y create-next-app@15 app --ts --eslint --app --src-dir --tailwind --no-import-alias \
      --use-pnpm --skip-install --yes \
 && cd app && pnpm install --frozen-lockfile=false \
 && pnpm store path > /opt/template/store-path \
 && rm -rf /opt/template/app/node_modules

# /workspace is where qai-jobs keeps the project; /tmp/qai its pid files and logs.
RUN mkdir -p /workspace /tmp/qai && chmod 0777 /workspace /tmp/qai
WORKDIR /workspace

# 3000: the dev server (WORKSPACE_PREVIEW_PORT); 3010: a second port for tools (storybook...).
EXPOSE 3000 3010
CMD ["sleep", "infinity"]
