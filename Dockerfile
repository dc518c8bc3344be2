FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streamgw ./streamgw
COPY web ./web
RUN pip install --no-cache-dir -e .
EXPOSE 1935 9935
ENTRYPOINT ["streamgw"]
CMD ["up", "--rtmp-addr", "0.0.0.0:1935", "--http-addr", "0.0.0.0:9935"]
